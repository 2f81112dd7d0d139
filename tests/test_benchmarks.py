"""Smoke runs of the benchmark scripts' --quick modes, so that the published tables stay reproducible.

Each script runs as a user runs it, from a scratch working folder; a quick run must finish, print its
table, and leave benchmarks/results/ (the recorded full runs) untouched.
"""

import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark_module(name: str):
    """A module of benchmarks/ (not a package: its scripts import each other as top-level modules)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def _results_digest() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((BENCHMARKS / "results").iterdir())}


@pytest.mark.parametrize(("script", "data", "expected"), [
    ("metric_speed.py", "coco", "| self-bleu |"),
    ("coco.py", "coco", "| mle | 0.800 |"),
    ("yelp_transfer.py", "yelp", "| textgan | overall |"),
    ("yelp_rerank.py", "yelp", "| 2 | 0 | 1 | 0.5 | 0 | 0 |"),
    ("oracle_baselines.py", "oracle", "| bigram (interpolated"),
    ("scaling.py", None, "| mle | 128 | 2 | 1 |"),
    ("oracle.py", "oracle", "| scratchgan |"),
    ("oracle_overfit.py", "oracle", "| the oracle |"),
    ("oracle_copying.py", "oracle", "| 0.85 |"),
    ("oracle_data_scaling.py", "oracle", "| 400 | LSTM of the oracle's shape |"),
    ("grammar_recipes.py", None, "| seqgan |"),
    ("default_seeds.py", None, "| 1 |"),
    ("ended_rows.py", None, "| beam 32 (16 sources) |"),
    ("grammar_sweep.py", None, "| seqgan, T=1.2 |"),
    ("sampler_speed.py", None, "| 5 | 64 |"),
    ("sampler_speed.py --precision bf16", None, "| 5 | 64 |"),
    ("precision.py", None, "| scratchgan | d128, 2 layers (default) |"),
    ("rollout_speed.py", None, "| re-encoding the prefix for every token |"),
    ("speed.py", None, "| 4x (d256, 2 layers) |"),
    ("throughput.py", None, "| 4x (d256, 2 layers) | 32 |"),
    ("train_forward.py", None, "| 4x (d256, 2 layers) | 21 |"),
    ("cpu_matmul.py", None, "| 128 | q/k/v | 128 x 384 |"),
    ("memory.py", None, "| 1 | "),
])
def test_quick_mode_runs_and_leaves_the_recorded_results_alone(script, data, expected, tmp_path):
    if data:
        shared_data(data)  # skips where ../shared/data is absent
    before = _results_digest()
    name, *options = script.split()
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), "--quick", *options], check=False, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
    assert _results_digest() == before


def test_fine_tune_settings_reproduce_the_preset_they_are_read_from():
    """The COCO and oracle benchmarks' ScratchGAN runs use the MLE warm-up preset's settings, whatever the
    recipe's defaults: the overrides, with the preset's step counts, give exactly the preset's config."""
    import yaml

    from textgan.config import parse_args
    from textgan.recipes import load_recipe

    pipeline = _benchmark_module("_pipeline")
    PRESETS, fine_tune_settings = pipeline.PRESETS, pipeline.fine_tune_settings
    _, config_cls = load_recipe("scratchgan")
    preset = PRESETS / "mle_warmup_scratchgan.yaml"
    steps = {k: v for k, v in yaml.safe_load(preset.read_text()).items() if k in ("out_dir", "pretrain_steps", "steps")}
    overrides = fine_tune_settings()
    assert overrides and not any(o.split("=")[0] in steps for o in overrides)
    from_overrides = parse_args(config_cls, [*overrides, *(f"{k}={v}" for k, v in steps.items())])
    assert from_overrides == parse_args(config_cls, [str(preset)])
    assert from_overrides != parse_args(config_cls, [f"{k}={v}" for k, v in steps.items()])  # the defaults differ


def test_a_run_trained_with_other_settings_is_not_reused(tmp_path, monkeypatch):
    """The benchmarks reuse their run folders: they must stop, naming the setting, where a run was trained
    with settings they no longer use (a default that changed since), and reuse it where the settings agree."""
    import dataclasses

    import yaml

    from textgan.config import to_dict
    from textgan.recipes import load_recipe

    pipeline = _benchmark_module("_pipeline")
    _, config_cls = load_recipe("scratchgan")
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.chdir(tmp_path)

    def trained(drop: str = "", **settings) -> None:
        saved = to_dict(dataclasses.replace(config_cls(), out_dir="elsewhere", resume=True, **settings))
        saved.pop(drop, None)
        (out / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")

    assert pipeline.changed_settings(out, "scratchgan", []) == {}  # no run there yet
    trained()
    assert pipeline.changed_settings(out, "scratchgan", [f"out_dir={out}"]) == {}
    pipeline.check_reusable(out, "scratchgan", [f"out_dir={out}"])
    default = config_cls().entropy_coef
    trained(entropy_coef=default + 0.5)
    assert pipeline.changed_settings(out, "scratchgan", []) == {"entropy_coef": (default + 0.5, default)}
    with pytest.raises(SystemExit, match=r"entropy_coef .*--retrain"):
        pipeline.check_reusable(out, "scratchgan", [])
    with pytest.raises(SystemExit, match="entropy_coef"):
        pipeline.plan_run("scratchgan", out, [], retrain=False)
    assert pipeline.plan_run("scratchgan", out, ["steps=9"], retrain=True) == ["steps=9"]  # trained again, in place
    same = [f"entropy_coef={default + 0.5}"]
    (out / "checkpoints").mkdir()  # stopped by a crash: resumed
    assert pipeline.plan_run("scratchgan", out, same, retrain=False) == [*same, "resume=true"]
    (out / "generator").mkdir()
    (out / "generator" / "config.json").write_text("{}")  # finished: reused
    assert pipeline.plan_run("scratchgan", out, same, retrain=False) is None
    # an option the run predates agrees at its default (the old behaviour), and only there
    trained(drop="entropy_coef")
    assert pipeline.changed_settings(out, "scratchgan", []) == {}
    assert pipeline.changed_settings(out, "scratchgan", ["entropy_coef=0.3"]) == {"entropy_coef": ("(not recorded)", 0.3)}
    # a file named relative to the working folder once and absolute the other time is the same file
    trained(data="corpus.txt")
    assert pipeline.changed_settings(out, "scratchgan", [f"data={tmp_path / 'corpus.txt'}"]) == {}
    assert set(pipeline.changed_settings(out, "scratchgan", [f"data={tmp_path / 'other.txt'}"])) == {"data"}


def test_gan_runs_start_from_the_mle_run_unless_they_name_another(tmp_path, monkeypatch):
    """train_all trains MLE first and points each GAN run at work/mle/generator; a run whose overrides name
    its own model= (coco.py --start) starts from that one alone."""
    pipeline = _benchmark_module("_pipeline")
    commands = []
    monkeypatch.setattr(pipeline.subprocess, "run", lambda command, **kwargs: commands.append(command))
    other = tmp_path / "mle-decay" / "generator"
    recipes = {"mle": ["steps=1"], "seqgan": ["steps=2"], "mle-decay": ("mle", ["lr_decay=0.3"]),
               "seqgan-from-mle-decay": ("seqgan", ["steps=2", f"model={other}"])}
    seconds = pipeline.train_all(tmp_path, ["seed=0"], recipes, quick=False, retrain=False)
    assert list(seconds) == list(recipes)
    models = [[a for a in command if a.startswith("model=")] for command in commands]
    assert models == [[], [f"model={tmp_path / 'mle' / 'generator'}"], [], [f"model={other}"]]
    assert [c[2] for c in commands] == ["textgan.recipes.mle", "textgan.recipes.seqgan", "textgan.recipes.mle",
                                       "textgan.recipes.seqgan"]


def test_tempered_nll_renormalises_each_position():
    """The oracle scaling table places a model at temperature T by the NLL of held-out tokens under
    p**(1/T), renormalised: here p = (0.8, 0.2), T = 0.5 gives (16/17, 1/17)."""
    import math

    import torch

    tempered_nll = _benchmark_module("oracle_data_scaling").tempered_nll
    logprobs = torch.tensor([0.8, 0.2]).log().expand(1, 2, 2)  # (N=1, L=2, V=2)
    tokens = torch.tensor([[0, 1]])
    assert math.isclose(tempered_nll(logprobs, tokens, 1.0), -(math.log(0.8) + math.log(0.2)) / 2, rel_tol=1e-6)
    assert math.isclose(tempered_nll(logprobs, tokens, 0.5), -(math.log(16 / 17) + math.log(1 / 17)) / 2, rel_tol=1e-6)


def test_default_seeds_judges_each_run_by_all_three_parts_of_the_bar():
    """A seed meets issue #2's bar only with 80% grammatical, distinct-4 within 20% of its corpus's and
    under 10 minutes; result files are named after the CPU model, whatever its trademark signs."""
    default_seeds = _benchmark_module("default_seeds")
    cpu_slug, meets_bar = default_seeds.cpu_slug, default_seeds.meets_bar
    run = {"eval/grammatical": 0.80, "eval/distinct_4": 0.60, "ref/distinct_4": 0.75, "wall_s": 599.0}
    assert meets_bar(run)
    assert not meets_bar({**run, "eval/grammatical": 0.799})
    assert not meets_bar({**run, "eval/distinct_4": 0.599})
    assert not meets_bar({**run, "wall_s": 600.0})
    assert cpu_slug("Intel(R) Xeon(R) Processor") == "intel_xeon_processor"
    assert cpu_slug("AMD EPYC 7B13") == "amd_epyc_7b13"
    assert cpu_slug(None) == "cpu"


def test_gan_points_are_compared_with_mles_curve_at_equal_quality():
    """MLE's curve is its undominated (grammatical, nll-test) points, read by linear interpolation; points
    past T=1 that are less grammatical and worse on held-out text than another point leave the curve. A GAN
    point less grammatical than the whole curve meets the curve's least grammatical point, which beats it."""
    grammar_sweep = _benchmark_module("grammar_sweep")
    mle = [(0.95, 2.0, 0.6), (0.90, 1.8, 0.8), (0.80, 1.6, 1.0), (0.70, 1.7, 1.2), (0.60, 1.9, 1.4)]
    curve = grammar_sweep.frontier(mle)
    assert curve == [(0.80, 1.6, 1.0), (0.90, 1.8, 0.8), (0.95, 2.0, 0.6)]
    assert grammar_sweep.at_equal_quality(curve, 0.85)[0] == pytest.approx(1.7)
    assert grammar_sweep.at_equal_quality(curve, 0.80) == (pytest.approx(1.6), "")
    assert grammar_sweep.at_equal_quality(curve, 0.95)[0] == pytest.approx(2.0)
    assert grammar_sweep.at_equal_quality(curve, 0.75) == (1.6, "its T=1 point, at 0.800 grammatical")
    assert grammar_sweep.at_equal_quality(curve, 0.99) is None
    assert grammar_sweep.frontier([(0.9, 1.8, 1.0), (0.9, 1.8, 1.1)]) == [(0.9, 1.8, 1.0), (0.9, 1.8, 1.1)]  # ties


def test_a_record_tells_alike_named_cpus_apart(tmp_path, monkeypatch):
    record = _benchmark_module("_record")
    cpuinfo = tmp_path / "cpuinfo"
    block = "processor\t: {}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {}\nmodel name\t: Intel(R) Xeon(R) Processor\nstepping\t: 2\n"
    cpuinfo.write_text(block.format(0, 207) + "\n" + block.format(1, 143) + "\n")  # the first CPU's block counts
    monkeypatch.setattr(record, "CPUINFO", cpuinfo)
    assert record.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert record.cpu_id() == "family 6 model 207 stepping 2"
    monkeypatch.setattr(record, "CPUINFO", tmp_path / "absent")  # not Linux
    assert record.cpu_model() is None and record.cpu_id() is None


def test_a_record_states_the_command_machine_date_and_wall_time(tmp_path, monkeypatch):
    import json
    import os
    import shutil
    import time

    record = _benchmark_module("_record")
    elapsed = record.wall_seconds()
    assert elapsed >= time.monotonic() - record._IMPORTED > 0  # the process began before the module was imported
    ps = shutil.which("ps")
    if ps:  # the process's age as ps tells it, in whole seconds
        age = int(subprocess.run([ps, "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True,
                                 check=True).stdout)
        assert abs(elapsed - age) < 3
    monkeypatch.setattr(record, "RESULTS", tmp_path)
    monkeypatch.setattr(record, "wall_seconds", lambda: 754.04)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "speed.py"), "--name", "my run"])
    path = record.record("trial", {"x": 1, "nll-oracle": float("inf")}, "| a |\n")
    saved = json.loads((tmp_path / "trial.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert saved["results"] == {"x": 1, "nll-oracle": None} and saved["wall_seconds"] == 754.0  # strict JSON
    assert saved["command"] == "python benchmarks/speed.py --name 'my run'"
    text = path.read_text()
    assert text.startswith("<!-- generated by `python benchmarks/speed.py --name 'my run'` on ")
    assert f", {saved['machine']['cpus']} CPUs" in text and "wall time 12.6 min." in text
    if saved["machine"]["cpu_id"]:
        assert f"{saved['machine']['cpu_model']}, {saved['machine']['cpu_id']})" in text
    monkeypatch.setenv("TEXTGAN_CPU_MATMUL", "default")  # a setting that changes what is measured is part of it
    monkeypatch.setenv("TEXTGAN_MALLOC", "a b")
    assert record.command() == "TEXTGAN_CPU_MATMUL=default TEXTGAN_MALLOC='a b' python benchmarks/speed.py --name 'my run'"
