"""textgan plot: a run's logged metrics over its steps (textgan.curves). Bad input: test_bad_input.py."""

import json
import math
import os
import shutil

import pytest
from conftest import run_module

from textgan.curves import CurvesError, minutes_at, read_log, select, smoothed


def _write_log(folder, records, tail=""):
    folder.mkdir(exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return folder / "metrics.jsonl"


def test_the_log_gives_a_series_per_metric_and_the_final_evaluation_at_the_last_step(tmp_path):
    log = _write_log(tmp_path / "run", [
        {"step": 10, "time": 1.5, "gen/loss": 3.0, "disc/acc": 0.9, "note": "text", "flag": True},
        {"step": 20, "time": 2.5, "gen/loss": 2.0, "disc/acc": float("nan")},
        {"step": 20, "time": 2.6, "eval/nll": 4.0, "ref/nll": 3.5},
        {"step": 30, "time": 3.5, "gen/loss": 1.5, "disc/acc": 0.8},
    ], tail='{"step": 40, "gen/lo')  # the line a run killed mid-write leaves
    (log.parent / "metrics.json").write_text(json.dumps({"eval/nll": 3.8, "ref/nll": 3.5, "eval/bleu": None,
                                                          "time/total_s": 9.0}))
    series, skipped = read_log(log)
    assert skipped == 1
    assert list(series) == ["gen/loss", "disc/acc", "eval/nll", "ref/nll", "eval/bleu"]  # no step, time, text, bools
    assert series["gen/loss"] == ([10, 20, 30], [3.0, 2.0, 1.5])
    assert math.isnan(series["disc/acc"][1][1])
    assert series["eval/nll"] == ([20, 30], [4.0, 3.8])  # the final evaluation, at the last logged step
    assert series["ref/nll"] == ([20, 30], [3.5, 3.5])
    assert series["eval/bleu"][0] == [30] and math.isnan(series["eval/bleu"][1][0])


def test_a_final_evaluation_older_than_the_log_is_left_out(tmp_path):
    """A finished run resumed for more steps keeps its old metrics.json until it finishes again: not its final."""
    log = _write_log(tmp_path / "run", [{"step": 10, "gen/loss": 3.0}, {"step": 20, "gen/loss": 2.0}])
    final = log.parent / "metrics.json"
    final.write_text(json.dumps({"eval/nll": 3.8}))
    older = log.stat().st_mtime_ns - 10**9
    os.utime(final, ns=(older, older))
    assert "eval/nll" not in read_log(log)[0]


def test_the_training_clock_runs_on_over_a_resumption(tmp_path):
    """A resumed process's records restart their time near 0: minutes go on from the last time before."""
    log = _write_log(tmp_path / "run", [
        {"step": 10, "time": 60.0, "gen/loss": 3.0}, {"step": 10, "time": 90.0, "eval/nll": 4.0},
        {"step": 20, "time": 120.0, "gen/loss": 2.0},
        {"step": 30, "time": 30.0, "gen/loss": 1.5},  # resumed from step 20's checkpoint
        {"step": 40, "time": 90.0, "gen/loss": 1.0}, {"step": 50, "gen/loss": 0.5},
    ], tail='{"step": 60, "ti')
    assert minutes_at(log) == {10: 1.0, 20: 2.0, 30: 2.5, 40: 3.5}


def test_smoothing_is_tensorboards_debiased_moving_average():
    assert smoothed([1.0, 5.0, 2.0], 0.0) == [1.0, 5.0, 2.0]
    a1 = 0.5 * 1
    a2 = 0.5 * a1 + 0.5 * 2
    a3 = 0.5 * a2 + 0.5 * 3
    assert smoothed([1.0, 2.0, math.nan, 3.0], 0.5)[:2] == pytest.approx([a1 / 0.5, a2 / 0.75])
    out = smoothed([1.0, 2.0, math.nan, 3.0], 0.5)
    assert math.isnan(out[2]) and out[3] == pytest.approx(a3 / 0.875)  # a gap does not count as a value
    assert smoothed([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])  # starts at the value, not at 0
    with pytest.raises(CurvesError, match=r"\[0, 1\)"):
        smoothed([1.0], 1.0)


def test_metrics_are_chosen_by_name_or_group_in_the_order_asked():
    names = ["gen/loss", "gen/entropy", "disc/loss", "disc/acc", "eval/nll"]
    assert select(names, "") == names
    assert select(names, "eval, disc/") == ["eval/nll", "disc/loss", "disc/acc"]
    assert select(names, "gen/entropy,gen") == ["gen/entropy", "gen/loss"]  # each once
    with pytest.raises(CurvesError, match="did you mean 'gen/entropy'"):
        select(names, "gen/entrpy")
    with pytest.raises(CurvesError, match="names no metric"):
        select(names, " , ")


def _image_size(path):
    import matplotlib.image

    assert path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    return matplotlib.image.imread(path).shape if path.suffix == ".png" else None


def test_plot_curves_from_python_chooses_metrics_as_textgan_plot_does(tmp_path):
    """plot_curves takes names or groups, as a list or comma-separated; a metric no run logged, no runs at all or a
    smoothing weight outside [0, 1) are errors. Each used to draw an image of empty panels (a string was taken a
    character a panel), or nothing but a blank figure."""
    from textgan.curves import plot_curves

    series, _ = read_log(_write_log(tmp_path / "run", [{"step": s, "gen/loss": 3.0 / s, "disc/acc": 0.5 + s / 100}
                                                       for s in (10, 20, 30)]))
    runs = {"a": series}
    for metrics in ("gen", ["gen"], "gen/loss,disc", ["gen/loss", "disc/acc"], "", []):
        path = tmp_path / "ok.png"
        path.unlink(missing_ok=True)
        assert plot_curves(runs, path, metrics) == path and path.stat().st_size > 0
    for kwargs, message in (({"metrics": ["nosuch"]}, "no metric or group 'nosuch' in the log"),
                            ({"metrics": "gen/los"}, "did you mean 'gen/loss'"),
                            ({"runs": {}}, "no runs to draw"),
                            ({"smooth": 1.0}, r"smoothing weight must be in \[0, 1\), got 1.0")):
        with pytest.raises(CurvesError, match=message):
            plot_curves(**{"runs": runs, "path": tmp_path / "bad.png", "metrics": "gen", **kwargs})
        assert not (tmp_path / "bad.png").exists()


def test_plot_sweep_refuses_an_axis_no_row_holds(tmp_path):
    """A misspelt axis drew an empty plot; it is an error naming what the rows hold."""
    from textgan.evaluation import EvaluationError, plot_sweep

    rows = [{"model": "a", "temperature": t, "bleu-5": 0.2 * t, "self-bleu-4": 0.3 * t} for t in (0.8, 1.0)]
    assert plot_sweep(rows, "bleu-5", "self-bleu-4", tmp_path / "ok.png").stat().st_size > 0
    with pytest.raises(EvaluationError, match="no sweep row holds 'bleu5'; they hold bleu-5, self-bleu-4"):
        plot_sweep(rows, "bleu5", "self-bleu-4", tmp_path / "bad.png")
    with pytest.raises(EvaluationError, match="there are no rows"):
        plot_sweep([], "bleu-5", "self-bleu-4", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_textgan_plot_draws_a_runs_log_into_its_folder(transfer_run, tmp_path):
    """A real run's log (the style-transfer fixture's: training, evaluation and test records), copied with its
    metrics.json so as to leave the shared fixture as it is."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "metrics.json"):
        shutil.copy2(transfer_run / name, run / name)
    result = run_module("textgan", "plot", str(run))
    assert result.returncode == 0, result.stderr
    series, _ = read_log(run / "metrics.jsonl")
    assert {k: v[0] for k, v in read_log(run)[0].items()} == {k: v[0] for k, v in series.items()}  # its log
    with pytest.raises(CurvesError, match="no such run folder or file"):  # not read_text's hint about sentences
        read_log(run / "missing.jsonl")
    once = [name for name, (steps, _) in series.items() if len(steps) == 1]  # the test set's scores, at the end
    assert any(name.startswith("test/") for name in once) and "gen/loss" not in once
    assert result.stdout.strip() == (f"wrote {run / 'curves.png'}: {len(series) - len(once)} metrics of 1 run, to step "
                                     f"100 ({len(once)} logged once each left out, such as {once[0]}: --metrics draws "
                                     "them)")
    height, width, _ = _image_size(run / "curves.png")
    assert width > 1000 and height > 500
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.json", "metrics.jsonl"]  # no leftovers


def test_textgan_plot_compares_runs_on_chosen_metrics(tmp_path):
    a = _write_log(tmp_path / "a", [{"step": s, "gen/loss": 3.0 / s, "eval/nll": 2.0, "ref/nll": 1.5} for s in (1, 2, 3)])
    b = _write_log(tmp_path / "b", [{"step": s, "gen/loss": 2.0 / s, "disc/acc": 0.5} for s in (1, 2, 3, 4)])
    out = tmp_path / "both.pdf"
    result = run_module("textgan", "plot", f"first={a.parent}", str(b), "--metrics", "gen,eval,ref",
                        "--smooth", "0", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}: 3 metrics of 2 runs, to step 4"
    _image_size(out)
    timed = _write_log(tmp_path / "timed", [{"step": s, "time": 30.0 * s, "gen/loss": 1.0 / s} for s in (1, 2, 3)])
    result = run_module("textgan", "plot", str(a.parent), str(timed.parent), "--x", "minutes", "--output", str(out))
    assert result.returncode == 0 and "3 metrics of 2 runs, to step 3" in result.stdout, result  # a has no times
    once = _write_log(tmp_path / "once", [{"step": 5, "test/bleu": 20.0}])  # only lone values: drawn all the same
    result = run_module("textgan", "plot", str(once.parent))
    assert result.returncode == 0 and result.stdout.strip().endswith(": 1 metrics of 1 run, to step 5"), result
