"""The command line: sampling from a trained model, and one-line errors (exit 2, no traceback)."""

import subprocess
import sys

import pytest
from conftest import run_module as run


def test_sample_writes_n_lines(trained_generator, tmp_path):
    args = ("sample", "--model", str(trained_generator), "-n", "5", "--temperature", "0.8", "--top-k", "20")
    # through a real interpreter, as a user runs it, and in this process as the other CLI tests run: the same lines
    result = subprocess.run([sys.executable, "-m", "textgan", *args], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
    assert run("textgan", *args).stdout == result.stdout
    target = tmp_path / "out.txt"
    result = run("textgan", "sample", "--model", str(trained_generator), "-n", "3", "--output", str(target))
    assert result.returncode == 0 and len(target.read_text().splitlines()) == 3
    on_cpu = tmp_path / "cpu.txt"
    result = run("textgan", "sample", "--model", str(trained_generator), "-n", "3", "--output", str(on_cpu), "--device", "cpu")
    assert result.returncode == 0 and len(on_cpu.read_text().splitlines()) == 3
    import torch

    if not torch.cuda.is_available():  # the default device is the CPU here: same seed, same samples
        assert on_cpu.read_text() == target.read_text()


def test_sample_continues_a_prompt(trained_generator):
    result = run("textgan", "sample", "--model", str(trained_generator), "-n", "4", "--prompt", "a man riding")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("a man riding ") for line in lines), lines


def test_the_examples_in_textgan_help_parse():
    import shlex

    from textgan.cli import EXAMPLES, _commands, _refuse_unknown_words, build_parser
    from textgan.recipes import RECIPES

    commands = [shlex.split(line, comments=True)[1:] for line in EXAMPLES.splitlines() if line.startswith("  textgan ")]
    assert {argv[0] for argv in commands} == set(_commands(build_parser()))  # an example of every command
    for argv in commands:
        _refuse_unknown_words(build_parser(), argv)
        args = build_parser().parse_args(argv)
        assert args.command != "train" or args.recipe in RECIPES


def test_an_option_may_be_shortened_to_a_unique_prefix(trained_generator):
    """Refusing unknown options before argparse parses must not refuse what argparse accepts."""
    full = run("textgan", "sample", "--model", str(trained_generator), "-n", "3", "--temperature", "0.7", "--seed", "2")
    assert full.returncode == 0, full.stderr
    short = run("textgan", "sample", "--mod", str(trained_generator), "--num=3", "--temp", "0.7", "--se", "2")
    assert short.returncode == 0 and short.stdout == full.stdout, short.stderr


def test_a_run_folder_stands_for_its_exported_generator(trained_generator):
    by_run = run("textgan", "sample", "--model", str(trained_generator.parent), "-n", "3", "--seed", "4")
    assert by_run.returncode == 0, by_run.stderr
    assert by_run.stdout == run("textgan", "sample", "--model", str(trained_generator), "-n", "3", "--seed", "4").stdout


def test_version_names_the_libraries():
    result = run("textgan", "--version")
    assert result.returncode == 0 and result.stdout.startswith("textgan 0.") and "torch 2." in result.stdout


def test_bare_command_lists_the_commands():
    """`textgan` alone, a user's first try, shows what it can do (and fails, having done nothing)."""
    result = run("textgan")
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith("usage: textgan")
    for command in ("train", "sample", "transfer", "evaluate", "sweep"):
        assert f"    {command} " in result.stderr


def test_hub_reachable_honours_the_endpoint_and_offline_mode(monkeypatch):
    import socket

    from textgan.hub import reachable as hub_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert hub_reachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server.close()  # nothing listens there now
    assert not hub_reachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # through a proxy, the hub client decides
    assert hub_reachable()


def test_model_names_that_cannot_be_found_fail_at_once(tmp_path, monkeypatch):
    """A path whose first folder is here is a path, not a hub name; a hub name with no hub in reach is looked
    up in the local cache only (no retries against the network) and fails in one line."""

    from textgan import hub
    from textgan.models import generator
    from textgan.models.generator import ModelError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelError, match="runs/nope: no such folder; give"):
        generator.load_generator("runs/nope")
    monkeypatch.setattr(hub, "reachable", lambda: False)
    with pytest.raises(ModelError, match="someorg/nomodel: no such folder, and the Hugging Face hub cannot be reached"):
        generator.load_generator("someorg/nomodel")


def test_a_hub_model_in_the_local_cache_loads_offline(trained_generator, tmp_path):
    """HF_HUB_OFFLINE=1 and a model in the hub cache (its layout written by hand): it loads, with no network."""
    import os
    import shutil

    snapshot = tmp_path / "cache" / "models--someorg--tiny" / "snapshots" / "0123abc"
    shutil.copytree(trained_generator, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "textgan", "sample", "--model", "someorg/tiny", "-n", "3"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result.stderr


def test_device_names():
    import torch

    from textgan.cli import _device
    from textgan.models.generator import ModelError

    assert _device("cpu") == torch.device("cpu")
    assert _device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, words in (("gpu0", "not a device"), ("meta", "cpu or cuda")):
        with pytest.raises(ModelError, match=words):
            _device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no GPU is visible"):
            _device("cuda")


def _assert_clean_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_sample_errors(trained_generator, tmp_path):
    _assert_clean_error(run("textgan", "sample", "--model", str(tmp_path / "missing")), "no such folder")
    _assert_clean_error(run("textgan", "sample", "--model", str(tmp_path)), "config.json")
    _assert_clean_error(run("textgan", "sample", "--model", ""), "no model was named")
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "--temperature", "0"), "temperature")
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "-n", "-3"), "-n")
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "--output", str(tmp_path / "no" / "x.txt")), "cannot write")
    _assert_clean_error(run("textgan", "sample", "--bogus"))
    for flag, value, words in (("-n", "x", "whole number"), ("--top-p", "1.5", "(0, 1]"), ("--top-k", "-2", "zero or more"),
                               ("--temperature", "inf", "finite")):
        _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), flag, value), flag, words)
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "--device", "gpu0"), "--device")
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "--prompt", "a Zebra"),
                        "no 'Zebra' (it knows them in lower case)")
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "--prompt", "a man riding",
                            "--max-length", "3"), "the prompt is 3 tokens")
    # a shell passes bytes that are not UTF-8 on as they are; Python's argv holds them as lone surrogates
    _assert_clean_error(run("textgan", "sample", "--model", str(trained_generator), "--prompt", "a \udcff man"),
                        "--prompt is not valid UTF-8")


def test_train_errors(tmp_path):
    _assert_clean_error(run("textgan", "train", "gan9000"), "unknown recipe")
    _assert_clean_error(run("textgan", "train", "steps=3", "mle"), "name the recipe first: textgan train mle")
    _assert_clean_error(run("textgan", "train"), "name a recipe", "scratchgan")
    _assert_clean_error(run("textgan", "train", "mle", "stpes=3"), "did you mean 'steps'")
    _assert_clean_error(run("textgan.recipes.scratchgan", "batch_size=-1"), "batch_size")
    _assert_clean_error(run("textgan.recipes.mle", f"data={tmp_path / 'none.txt'}", f"out_dir={tmp_path / 'r'}"), "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    _assert_clean_error(run("textgan.recipes.seqgan", f"data={empty}", f"out_dir={tmp_path / 'r'}"), "no sentences")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    _assert_clean_error(run("textgan.recipes.mle", f"data={bad}", f"out_dir={tmp_path / 'r'}"), "UTF-8")


def test_recipe_help_lists_fields():
    result = run("textgan.recipes.scratchgan", "--help")
    assert result.returncode == 0
    for field in ("discount", "baseline", "pretrain_steps", "spectral_norm", "resume"):
        assert field in result.stdout
    for flag in ("--help", "-h"):
        result = run("textgan", "train", flag)  # the train command's own help names every recipe
        assert result.returncode == 0 and not result.stderr, result.stderr
        assert all(recipe in result.stdout for recipe in ("scratchgan", "seqgan", "mle", "style_transfer"))


def test_train_command_runs_a_recipe(tmp_path):
    out = tmp_path / "run"
    result = run("textgan", "train", "scratchgan", f"out_dir={out}", "grammar_sentences=200", "d_model=32", "n_layers=1",
                 "n_heads=2", "batch_size=8", "pretrain_steps=1", "steps=2", "disc_dim=16", "eval_samples=8")
    assert result.returncode == 0, result.stderr
    assert "grammatical rate of samples" in result.stdout
    assert (out / "generator" / "config.json").is_file() and (out / "metrics.json").is_file()


def test_a_10000_token_line_is_dropped_with_a_note_not_a_crash(tmp_path):
    from textgan.grammar import Grammar

    data = tmp_path / "data.txt"
    data.write_text("\n".join(Grammar.default().sample_corpus(60, seed=0) + ["word " * 10_000]) + "\n")
    result = run("textgan.recipes.mle", f"data={data}", f"out_dir={tmp_path / 'run'}", "steps=1", "d_model=16",
                 "n_layers=1", "n_heads=2", "batch_size=4", "eval_samples=4")
    assert result.returncode == 0, result.stderr
    assert "longer than max_length=20 tokens and were dropped" in result.stdout
    scored = run("textgan", "evaluate", "--samples", str(data), "--references", str(data), "--metrics", "bleu,self-bleu")
    assert scored.returncode == 0, scored.stderr


def test_tokenizer_that_does_not_fit_the_model_is_refused(trained_generator, tmp_path):
    import shutil

    from textgan.tokenization import build_word_tokenizer

    broken = tmp_path / "broken"
    shutil.copytree(trained_generator, broken)
    bigger = build_word_tokenizer([f"w{i}" for i in range(2000)])
    bigger.save_pretrained(broken)
    _assert_clean_error(run("textgan", "sample", "--model", str(broken)), "do not belong together")
    _assert_clean_error(run("textgan", "evaluate", "--samples", str(broken / "config.json"), "--lm", str(broken)),
                        "do not belong together")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C in sample, evaluate, sweep or transfer: exit 130 and one line, not a KeyboardInterrupt traceback."""
    from textgan import cli

    def interrupted(args):
        raise KeyboardInterrupt

    for name, argv in (("cmd_sample", ["sample", "--model", "m"]), ("cmd_evaluate", ["evaluate", "--samples", "s"]),
                       ("cmd_sweep", ["sweep", "--model", "m", "--output", "o"]),
                       ("cmd_transfer", ["transfer", "--from", "neg", "--to", "pos"])):
        monkeypatch.setattr(cli, name, interrupted)
        assert cli.main(argv) == 130
        again = "; run it again with --resume to keep the rows it made" if argv[0] == "sweep" else ""
        assert capsys.readouterr().err.strip() == f"interrupted; textgan {argv[0]} stopped before it finished{again}"


@pytest.mark.parametrize("argv", [
    ["-m", "textgan", "sample", "--model", "{generator}", "-n", "50"],
    ["-m", "textgan", "evaluate", "--samples", "{samples}"],
    ["-m", "textgan", "--version"],
    ["-m", "textgan.recipes.scratchgan", "--help"],
], ids=["sample", "evaluate", "version", "recipe-help"])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv, trained_generator, tmp_path):
    """`textgan ... | head`: when the reader of its output is gone the command stops as SIGPIPE would stop it
    (exit 141), with no BrokenPipeError traceback. Here the pipe's reading end is closed before the command
    writes to it."""
    (tmp_path / "samples.txt").write_text("a man riding a bike .\na dog on a couch .\n")
    argv = [word.format(generator=trained_generator, samples=tmp_path / "samples.txt") for word in argv]
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_full_disk_is_one_line_that_names_the_file(trained_generator, tmp_path, monkeypatch):
    """textgan sample --output on a full disk: one line naming the file (not its temporary), exit 1, nothing left."""
    import errno
    import pathlib

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "samples.txt"
    result = run("textgan", "sample", "--model", str(trained_generator), "-n", "3", "--output", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"error: cannot write {out}: No space left on device; free space "
                                                      "(or fix the disk), then run the command again")
    assert not list(tmp_path.iterdir())
