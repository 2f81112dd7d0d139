"""Scoring sample sets, `textgan evaluate` and `textgan sweep`: results, files, and one-line errors."""

import json
import math

import pytest
from test_cli import _assert_clean_error, run

from textgan import metrics as text_metrics
from textgan.data import json_text
from textgan.evaluation import (
    EvaluationError,
    default_metrics,
    format_table,
    parse_metrics,
    plot_sweep,
    score,
)

SAMPLES = ["a man rides a bike", "a man rides a red bike", "two dogs play in the snow", "a man rides a bike"]
REFERENCES = ["a man rides a bike down the street", "two dogs play in the snow", "a cat sleeps on a bed"]


def test_score_computes_the_named_metrics():
    scores = score(SAMPLES, ["bleu", "self-bleu", "distinct", "unique", "copied", "grammar"], references=REFERENCES,
                   train=["two dogs play in the snow"], orders=(2, 3))
    assert set(scores) >= {"bleu-2", "bleu-3", "self-bleu-2", "distinct-4", "unique", "copied", "grammatical"}
    assert scores["unique"] == 0.75 and scores["copied"] == 0.25
    assert 0 < scores["bleu-2"] <= 1 and 0 < scores["self-bleu-3"] <= 1


def test_metric_names_and_requirements():
    with pytest.raises(EvaluationError, match="unknown metric"):
        parse_metrics("bleu,blue")
    with pytest.raises(EvaluationError, match="needs --references"):
        score(SAMPLES, ["bleu"])
    with pytest.raises(EvaluationError, match="no samples"):
        score([], ["distinct"])
    assert "bleu" not in default_metrics(references=False, train=False, lm=False, oracle=False, grammar=False)


def test_score_from_python_takes_metrics_as_a_list_or_a_string_and_refuses_unknown_ones():
    """score's metrics as the CLI's comma-separated text or a list; a misspelt or missing name is an error (it
    used to be skipped silently, its scores absent), and a string is not matched by substring (``"self-bleu"``
    asked for BLEU too, which then needed references)."""
    assert set(score(SAMPLES, "self-bleu,unique", orders=(2,))) == {"samples", "self-bleu-2", "unique"}
    assert score(SAMPLES, "unique") == score(SAMPLES, ["unique"])
    with pytest.raises(EvaluationError, match="unknown metric blue; choose from bleu"):
        score(SAMPLES, ["blue"], references=REFERENCES)
    with pytest.raises(EvaluationError, match="no metric named"):
        score(SAMPLES, [])
    with pytest.raises(TypeError, match=r"orders must be a sequence of n-gram orders such as \(2, 3, 4, 5\), got 4"):
        score(SAMPLES, ["self-bleu"], orders=4)  # was "'int' object is not iterable"


def test_sentences_nll_refuses_what_it_cannot_score(trained_generator):
    """A temperature of 0 returned nan; no sentences said that none fits the length limit."""
    from textgan.evaluation import sentences_nll
    from textgan.models import load_generator

    model, tokenizer = load_generator(str(trained_generator))
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        sentences_nll(model, tokenizer, ["a man"], temperature=0)
    with pytest.raises(ValueError, match="batch_size at least 1"):
        sentences_nll(model, tokenizer, ["a man"], batch_size=0)
    with pytest.raises(TypeError, match="got one str"):
        sentences_nll(model, tokenizer, "a man")
    with pytest.raises(EvaluationError, match="no sentences to score"):
        sentences_nll(model, tokenizer, [])
    with pytest.raises(EvaluationError, match="none of the 1 sentences fits the model's length limit"):
        sentences_nll(model, tokenizer, [" ".join(["a"] * 500)])
    nll, dropped = sentences_nll(model, tokenizer, ["a man", " ".join(["a"] * 500)])
    assert math.isfinite(nll) and dropped == 1


def test_a_string_in_place_of_a_list_of_sentences_is_refused():
    """One string would be scored a character a sentence (distinct-1 of 'a b c' is 0.6); it is refused."""
    with pytest.raises(TypeError, match="samples must be a list of sentences"):
        score("a man rides a bike", ["distinct"])
    with pytest.raises(TypeError, match="references must be a list of sentences"):
        score(SAMPLES, ["bleu"], references="a man rides a bike")
    with pytest.raises(ValueError, match="positive integer n"):
        text_metrics.distinct_n(SAMPLES, 0)


def test_the_metric_functions_refuse_one_string_and_no_sentences():
    """textgan.metrics and fed, called directly: one string is refused as score refuses it (unique_rate('abc')
    was 1.0, and copy_rate against a string compared with its characters), and so is an empty set of sentences,
    whose rates were 0.0, the figure of a model that never copies or never repeats itself."""
    from textgan.fed import fed

    for call in (lambda: text_metrics.unique_rate("a man"), lambda: text_metrics.distinct_n("a man", 1),
                 lambda: text_metrics.grammar_scores("a man"), lambda: fed("a man", SAMPLES, encoder=None)):
        with pytest.raises(TypeError, match="must be a list of sentences|expected a list of sentences"):
            call()
    with pytest.raises(TypeError, match="training must be a list of sentences"):
        text_metrics.copy_rate(SAMPLES, "a man rides a bike")
    for call in (lambda: text_metrics.unique_rate([]), lambda: text_metrics.copy_rate([], SAMPLES),
                 lambda: text_metrics.distinct_n([], 2), lambda: text_metrics.grammar_scores([])):
        with pytest.raises(ValueError, match="no sentences to score"):
            call()
    assert text_metrics.distinct_n(["a"], 2) == 0.0  # sentences without a bigram: none of them is distinct
    assert text_metrics.grammar_scores(["a man rides a bike ."])["grammatical"] in (0.0, 1.0)  # the embedded grammar


def test_reverse_lm_and_lm_scores_are_finite(trained_generator):
    from textgan.grammar import Grammar
    from textgan.models.generator import load_generator

    text = Grammar.default().sample_corpus(60, seed=3)
    scores = score(text[:30], ["lm", "reverse-lm"], references=text[30:], lm=load_generator(str(trained_generator)),
                   reverse_lm_steps=3)
    assert 0 < scores["lm-nll"] < 20 and 0 < scores["reverse-lm-nll"] < 20


@pytest.fixture()
def files(tmp_path):
    samples, references = tmp_path / "samples.txt", tmp_path / "references.txt"
    samples.write_text("\n".join(SAMPLES) + "\n")
    references.write_text("\n".join(REFERENCES) + "\n")
    return samples, references


def test_scores_without_a_finite_value_are_null_in_json_and_skipped_in_plots(tmp_path):
    """JSON has no inf: Python's ``Infinity`` would break strict readers (jq, JavaScript) of sweep.json."""
    rows = [{"model": "m", "temperature": t, "nll-oracle": v, "nll-test": 7.0 + t}
            for t, v in ((0.7, 9.1), (1.0, math.inf), (1.3, None))]
    text = json_text(rows)
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert [r["nll-oracle"] for r in strict] == [9.1, None, None]
    assert "| m | 1.000 | inf | 8.000 |" in format_table(rows) and "| m | 1.300 | n/a | 8.300 |" in format_table(rows)
    plot_sweep(strict, "nll-oracle", "nll-test", tmp_path / "sweep.png")  # the one finite point is drawn, no error
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_one_sample_is_scored_without_self_bleu_and_says_so(tmp_path):
    (tmp_path / "one.txt").write_text("a man riding a bike .\n")
    result = run("textgan", "evaluate", "--samples", str(tmp_path / "one.txt"))
    assert result.returncode == 0, result.stderr
    assert "holds one sample: no self-bleu" in result.stderr and "distinct-1" in result.stdout


def test_evaluate_prints_a_table_and_writes_json(files, tmp_path):
    samples, references = files
    out = tmp_path / "scores.json"
    result = run("textgan", "evaluate", "--samples", str(samples), "--references", str(references), "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| bleu-5 |" in result.stdout and "| self-bleu-2 |" in result.stdout
    saved = json.loads(out.read_text())
    assert saved["scores"]["samples"] == 4 and "bleu-4" in saved["scores"]


def test_a_runs_samples_file_is_scored_for_its_last_evaluation(files, tmp_path):
    """A recipe's samples.txt holds each evaluation under '# step N': evaluate scores the last block alone."""
    from textgan.evaluation import last_evaluation

    samples, references = files
    run_file = tmp_path / "run_samples.txt"
    run_file.write_text("# step 2\nan early sample\nanother one\n# step 4\n" + samples.read_text())
    assert last_evaluation(run_file.read_text().splitlines()) == (SAMPLES, [2, 4])
    assert last_evaluation(SAMPLES) == (SAMPLES, [])
    out = tmp_path / "scores.json"
    result = run("textgan", "evaluate", "--samples", str(run_file), "--references", str(references), "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("note:") and "4 samples of step 4, the last of 2 evaluations" in result.stderr
    direct = run("textgan", "evaluate", "--samples", str(samples), "--references", str(references))
    assert result.stdout == direct.stdout  # the same scores as the block alone
    assert json.loads(out.read_text())["samples_step"] == 4
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    run_file.rename(run_folder / "samples.txt")
    (run_folder / "config.yaml").write_text("steps: 4\n")  # what makes a folder a run's
    by_folder = run("textgan", "evaluate", "--samples", str(run_folder), "--references", str(references))
    assert by_folder.returncode == 0 and by_folder.stdout == direct.stdout, by_folder.stderr
    run_file = run_folder / "samples.txt"
    run_file.write_text("# step 2\na sample\n# step 4\n")
    _assert_clean_error(run("textgan", "evaluate", "--samples", str(run_file)), "no samples after its last '# step 4'")


def test_evaluate_errors(files, tmp_path):
    samples = files[0]
    evaluate = ("textgan", "evaluate", "--samples")
    _assert_clean_error(run(*evaluate, str(tmp_path / "missing.txt")), "no such file")
    _assert_clean_error(run(*evaluate, str(tmp_path)), "directory")
    (tmp_path / "blank.txt").write_text("\n  \n")
    _assert_clean_error(run(*evaluate, str(tmp_path / "blank.txt")), "no sentences")
    (tmp_path / "bad.txt").write_bytes(b"a b\n\xff\xfe\n")
    _assert_clean_error(run(*evaluate, str(tmp_path / "bad.txt")), "UTF-8")
    _assert_clean_error(run(*evaluate, str(samples), "--metrics", "bleu"), "--references")
    _assert_clean_error(run(*evaluate, str(samples), "--metrics", "bleu,nope"), "unknown metric")
    _assert_clean_error(run(*evaluate, str(samples), "--orders", "2,x"), "--orders")
    _assert_clean_error(run(*evaluate, str(samples), "--lm", str(tmp_path / "nomodel")), "no such folder")
    _assert_clean_error(run(*evaluate, str(samples), "--oracle", str(samples)), "not an npz")
    _assert_clean_error(run(*evaluate, str(samples), "--json", str(tmp_path / "no" / "s.json")), "cannot write")
    _assert_clean_error(run(*evaluate, str(samples), "--json", str(tmp_path)), "directory")
    kept = samples.read_text()
    for flag in ("--samples", "--references"):  # the JSON would replace an input file
        _assert_clean_error(run(*evaluate, str(samples), "--references", str(files[1]), "--json",
                                str(samples if flag == "--samples" else files[1])), f"is the {flag} file")
    assert samples.read_text() == kept
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.tmp"))


def test_sweep_writes_curve_plot_and_samples(trained_generator, files, tmp_path):
    _, references = files
    out = tmp_path / "sweep"
    result = run("textgan", "sweep", "--model", f"tiny={trained_generator}", "--temperatures", "0.8,1.2", "-n", "12",
                 "--references", str(references), "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["temperature"] for r in rows] == [0.8, 1.2]
    assert all("bleu-5" in r and "self-bleu-4" in r and "nll-test" in r for r in rows)
    # a hotter distribution puts less probability on real text: NLL-test rises from T=0.8 to T=1.2 only if
    # the model is sharper than the data; either way it must differ and be finite
    assert rows[0]["nll-test"] != rows[1]["nll-test"]
    assert (out / "sweep.png").stat().st_size > 1000
    assert len((out / "samples" / "tiny_T0.8.txt").read_text().splitlines()) == 12


def test_an_interrupted_sweep_resumes_to_what_an_unbroken_one_writes(trained_generator, files, tmp_path):
    """--resume keeps the rows already made (a sweep stopped after two of its three temperatures) and makes the
    rest; the result equals one unbroken sweep. Rows made from other inputs or another model are refused."""
    import shutil

    references = files[1]
    model = tmp_path / "model"
    shutil.copytree(trained_generator, model)
    sweep = ("textgan", "sweep", "--model", f"tiny={model}", "-n", "12", "--references", str(references), "--output")
    assert run(*sweep, str(tmp_path / "whole"), "--temperatures", "0.8,1.0,1.2").returncode == 0
    part = tmp_path / "part"
    assert run(*sweep, str(part), "--temperatures", "0.8,1.0").returncode == 0
    made = (part / "samples" / "tiny_T0.8.txt").stat().st_mtime_ns
    result = run(*sweep, str(part), "--temperatures", "0.8,1.0,1.2", "--resume")
    assert result.returncode == 0, result.stderr
    assert "2 of 3 rows are done" in result.stderr
    assert (part / "samples" / "tiny_T0.8.txt").stat().st_mtime_ns == made  # kept, not sampled again
    assert (part / "sweep.json").read_text() == (tmp_path / "whole" / "sweep.json").read_text()
    for name in ("tiny_T1.2.txt", "tiny_T0.8.txt"):
        assert (part / "samples" / name).read_text() == (tmp_path / "whole" / "samples" / name).read_text()

    _assert_clean_error(run(*sweep[:5], "13", *sweep[6:], str(part), "--resume"), "holds a sweep of other inputs")
    (model / "config.json").write_text((model / "config.json").read_text() + " ")  # the model changed
    _assert_clean_error(run(*sweep, str(part), "--resume"), "model 'tiny' has changed")
    fresh = run(*sweep, str(tmp_path / "new"), "--temperatures", "1.0", "--resume")  # nothing to resume: starts
    assert fresh.returncode == 0 and "0 of 1 rows are done" in fresh.stderr


@pytest.mark.skipif(not hasattr(__import__("os"), "pwrite"), reason="flock folder locks are POSIX only")
def test_a_sweep_into_a_folder_another_sweep_is_writing_is_refused(trained_generator, files, tmp_path):
    """Two sweeps into one --output used to interleave their samples and leave whichever sweep.json was written
    last; the second now stops with one line, and the folder is as it was."""
    import fcntl
    import os

    out = tmp_path / "sweep"
    sweep = ("textgan", "sweep", "--model", f"tiny={trained_generator}", "--temperatures", "1.0", "-n", "4",
             "--references", str(files[1]), "--output", str(out))
    assert run(*sweep).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweep is writing there
        os.pwrite(fd, b"4242\n", 0)
        _assert_clean_error(run(*sweep), "is in use by another sweep or run (process 4242)")
        _assert_clean_error(run(*sweep, "--resume"), "give another --output")
    finally:
        os.close(fd)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert run(*sweep, "--resume").returncode == 0  # let go of: the folder is free again


def test_sweep_errors(trained_generator, files, tmp_path):
    references = files[1]
    sweep = ("textgan", "sweep", "--references", str(references))
    _assert_clean_error(run(*sweep, "--model", str(trained_generator), "--temperatures", "0,1", "--output", str(tmp_path / "o")),
                        "--temperatures")
    _assert_clean_error(run(*sweep, "--model", str(tmp_path / "none"), "--output", str(tmp_path / "o")), "no such folder")
    _assert_clean_error(run(*sweep, "--model", "mle=", "--output", str(tmp_path / "o")), "no model was named")
    _assert_clean_error(run(*sweep, "--model", str(trained_generator), "--output", str(references)), "is a file")
    import shutil

    outside = tmp_path / "copied"  # the same model outside its run: nothing says what it was trained on
    shutil.copytree(trained_generator, outside)
    _assert_clean_error(run("textgan", "sweep", "--model", str(outside), "--output", str(tmp_path / "o"), "-n", "4",
                            "--temperatures", "1.0"), "bleu-5")


@pytest.mark.parametrize("change, error, message", [
    ({"models": "runs/mle"}, TypeError, "models must map labels to model folders"),  # was "no attribute 'items'"
    ({"temperatures": 1.0}, TypeError, "temperatures must be a list"),  # was "'float' object is not iterable"
    ({"temperatures": []}, ValueError, "at least one model and one temperature"),  # were 0 rows and an empty sweep
    ({"models": {}}, ValueError, "at least one model and one temperature"),
    ({"temperatures": [1.0, 0.0]}, ValueError, "temperature must be a finite positive number"),
    ({"n": 0}, ValueError, "n of at least 1"),  # was "no samples to score", after sampling
    ({"metrics": ["blue"]}, EvaluationError, "unknown metric blue"),  # was raised after the first sampling
    ({"references": "a man rides a bike"}, TypeError, "references must be a list of sentences"),
])
def test_sweep_from_python_checks_its_arguments_before_it_writes(trained_generator, tmp_path, change, error, message):
    """evaluation.sweep refuses arguments it cannot use before it samples or makes its folder."""
    from textgan.evaluation import sweep

    arguments = {"models": {"tiny": str(trained_generator)}, "temperatures": [1.0], "n": 4, "metrics": ["distinct"],
                 "out_dir": tmp_path / "sweep", "progress": False}
    with pytest.raises(error, match=message):
        sweep(**{**arguments, **change})
    assert not (tmp_path / "sweep").exists()
    assert {"distinct-4", "unique"} <= set(sweep(**{**arguments, "metrics": "distinct,unique"})[0])  # as --metrics


def test_a_grammar_run_is_scored_by_the_grammar_and_swept_with_no_files(trained_generator, tmp_path):
    """The default run trains on the embedded grammar, which scores its samples exactly: evaluate adds the
    grammatical rate for a run's samples, and sweep needs no files, tracing the grammatical rate against NLL on
    the run's own held-out sentences (at T=1 the run's own final figure)."""
    run_dir = trained_generator.parent
    scored = run("textgan", "evaluate", "--samples", str(run_dir))
    assert scored.returncode == 0, scored.stderr
    assert "| grammatical |" in scored.stdout and "| grammar-nll |" in scored.stdout
    out = tmp_path / "sweep"
    result = run("textgan", "sweep", "--model", str(trained_generator), "--temperatures", "1.0,1.5", "-n", "12",
                 "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "held-out grammar sentences" in result.stderr
    rows = json.loads((out / "sweep.json").read_text())
    assert all({"grammatical", "grammar-nll", "nll-test"} <= r.keys() for r in rows)
    final = json.loads((run_dir / "metrics.json").read_text())
    assert rows[0]["nll-test"] == pytest.approx(final["eval/nll_valid"], abs=1e-5)
    assert (out / "sweep.png").stat().st_size > 1000
    plain = tmp_path / "plain.txt"  # samples outside any run: scored by what the files given allow
    plain.write_text((run_dir / "samples.txt").read_text())
    assert "grammatical" not in run("textgan", "evaluate", "--samples", str(plain)).stdout
