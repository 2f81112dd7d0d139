"""The benchmarks' shared training pipeline: MLE first, then each GAN recipe fine-tuning the MLE generator."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "recipes"

# --quick: a few steps of each, to check that a benchmark runs end to end
QUICK = {
    "mle": ["steps=30", "eval_every=1000", "eval_samples=32", "d_model=32", "n_layers=1"],
    "seqgan": ["disc_pretrain_steps=2", "steps=2", "num_rollouts=2", "batch_size=16", "eval_every=1000", "eval_samples=32"],
    "scratchgan": ["steps=3", "batch_size=32", "eval_every=1000", "eval_samples=32"],
}


def fine_tune_settings(preset: str = "mle_warmup_scratchgan.yaml") -> list[str]:
    """The adversarial settings of a preset as ``key=value`` overrides (its run folder and step counts left out).

    The COCO and oracle benchmarks fine-tune their MLE generator with ScratchGAN as the MLE warm-up
    preset does: the default recipe of 2026-11-22, when their figures were first made. Reading the
    preset, rather than inheriting the recipe's defaults, keeps them measuring the same thing when the
    default (now a from-scratch setting) changes.
    """
    settings = yaml.safe_load((PRESETS / preset).read_text(encoding="utf-8"))
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()
            if key not in ("out_dir", "pretrain_steps", "steps")]


def seeded(benchmark: str, seed: int, work: Path | None) -> tuple[str, Path]:
    """A benchmark's results name and run folder for ``seed``: ``coco`` and runs/bench_coco for seed 0,
    ``coco_seed1`` and runs/bench_coco_seed1 for seed 1, so that seeds never share runs or results.
    ``work`` (--work), when given, is the run folder."""
    name = benchmark if seed == 0 else f"{benchmark}_seed{seed}"
    return name, work or Path("runs") / f"bench_{name}"


# settings that do not change what a run trains: where it writes, whether it resumed, what it prints
IGNORED = ("out_dir", "resume", "print_samples", "log_every")
PATHS = ("data", "valid_file", "model")  # settings that name files or folders


def changed_settings(out: Path, recipe: str, overrides: list[str]) -> dict[str, tuple]:
    """The settings in which the run in ``out`` differs from the one ``recipe`` with ``overrides`` would train
    now, as ``{key: (ran with, now)}``; empty when they agree or when ``out`` holds no textgan run.

    The benchmarks reuse their run folders, and a recipe's defaults change over time (ScratchGAN's entropy
    bonus did): this is what keeps a results table from mixing an old run with a new default. A setting
    that the run did not record (an option added after it) counts as agreeing where it is now at its
    default, since a new option's default is the behaviour from before the option existed.
    """
    from textgan.config import parse_args, to_dict
    from textgan.recipes import load_recipe
    from textgan.training import run_config

    ran = run_config(out)
    if ran is None:
        return {}
    _, config_cls = load_recipe(recipe)
    default = yaml.safe_load(yaml.safe_dump(to_dict(config_cls())))
    now = yaml.safe_load(yaml.safe_dump(to_dict(parse_args(config_cls, overrides))))

    def same(key: str, old, new) -> bool:  # a path given relative one time and absolute the other is the same path
        if old == new:
            return True
        if key in PATHS and old and new and isinstance(old, str) and isinstance(new, str):
            return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
        return False

    return {key: (ran.get(key, "(not recorded)"), value) for key, value in now.items()
            if key not in IGNORED and not same(key, ran.get(key, default[key]), value)}


def check_reusable(out: Path, recipe: str, overrides: list[str],
                   remedy: str = "Pass --retrain to train it again in its place, or move the folder away to keep it",
                   ) -> None:
    """Stop with a one-line message ending in ``remedy`` where the run in ``out`` was trained with other
    settings than ``recipe`` with ``overrides`` (see :func:`changed_settings`)."""
    changed = changed_settings(out, recipe, overrides)
    if changed:
        listed = ", ".join(f"{key} {ran} (now {now})" for key, (ran, now) in changed.items())
        raise SystemExit(f"{out} was trained with other settings than this benchmark uses now: {listed}. {remedy}")


def plan_run(recipe: str, out: Path, overrides: list[str], retrain: bool) -> list[str] | None:
    """What to do with the run folder ``out`` of ``recipe`` with ``overrides``: None to reuse the finished
    run there; else the overrides to run with, plus ``resume=true`` where a crash stopped such a run.
    Unless ``retrain``, stops (:func:`check_reusable`) where the kept run had other settings."""
    if retrain:
        return overrides
    check_reusable(out, recipe, overrides)
    if (out / "generator" / "config.json").is_file():
        return None
    if (out / "checkpoints").is_dir():  # a run that a crash stopped: go on from its checkpoint
        return [*overrides, "resume=true"]
    return overrides


def launch(recipe: str, args: list[str], output: IO[str] | None, in_process: bool, cwd: Path | None = None) -> None:
    """Train ``python -m textgan.recipes.<recipe> ARGS`` in a subprocess, as a user runs it, its output (stdout,
    and stderr too where ``output`` is a file) into ``output`` (None: nowhere); a failed run raises
    ``CalledProcessError``. ``in_process`` (the --quick smoke runs) trains through the same entry point in this
    process instead: a smoke run is a few steps, and a fresh interpreter's imports of torch and transformers
    are most of its time (4 of the 5 seconds of the few steps of MLE that a smoke run trains)."""
    command = [sys.executable, "-m", f"textgan.recipes.{recipe}", *args]
    if not in_process:
        subprocess.run(command, check=True, cwd=cwd, stdout=output or subprocess.DEVNULL,
                       stderr=subprocess.STDOUT if output else None)
        return
    import torch

    from textgan.recipes import load_recipe
    from textgan.recipes._cli import run_recipe as run_entry_point

    module, config_cls = load_recipe(recipe)
    here = Path.cwd()
    sink = output or io.StringIO()
    try:
        os.chdir(cwd or here)
        with torch.enable_grad(), contextlib.redirect_stdout(sink), \
                (contextlib.redirect_stderr(sink) if output else contextlib.nullcontext()):
            code = run_entry_point(config_cls, module.main, f"python -m textgan.recipes.{recipe}", args)
    finally:
        os.chdir(here)
    if code:
        raise subprocess.CalledProcessError(code, command)


def run_logged(recipe: str, args: list[str], log: Path | None, in_process: bool, cwd: Path | None = None) -> float:
    """Train ``python -m textgan.recipes.<recipe> ARGS`` (see :func:`launch`), its output into the file ``log``
    (None: nowhere). -> its wall seconds, start-up included."""
    print("running:", " ".join(["python", "-m", f"textgan.recipes.{recipe}", *args]),
          *([f"(log: {log})"] if log else []), flush=True)
    start = time.time()
    with open(log, "w") if log else contextlib.nullcontext() as f:
        launch(recipe, args, f, in_process, cwd)
    return round(time.time() - start, 1)


def run_recipe(recipe: str, overrides: list[str], out: Path, in_process: bool = False) -> dict:
    """Run ``python -m textgan.recipes.<recipe>`` with ``overrides`` (``out_dir=out`` among them) from the
    repository root, so that preset paths resolve from anywhere (in this process where ``in_process``: see
    :func:`launch`). -> the run's final ``metrics.json`` with its wall seconds, start-up included, as ``wall_s``."""
    wall = run_logged(recipe, overrides, None, in_process, cwd=ROOT)
    return {"wall_s": wall, **json.loads((out / "metrics.json").read_text())}


def train_all(work: Path, common: list[str], recipes: dict[str, list[str] | tuple[str, list[str]]], quick: bool,
              retrain: bool) -> dict[str, float]:
    """Train each recipe (``mle`` first) into ``work/<recipe>``; GAN recipes start from ``work/mle/generator``
    unless their overrides name another ``model=``.
    A value ``(recipe, overrides)`` trains that recipe under its key's name instead (``"mle-decay": ("mle",
    [..., "lr_decay=0.3"])`` into ``work/mle-decay``).

    A run whose exported generator exists is reused unless ``retrain``; one that has checkpoints but no
    export (stopped by a crash) resumes from its newest checkpoint. Either stops the benchmark where the
    run's settings differ from the ones it would train with now. Returns wall seconds per recipe.
    """
    seconds = {}
    for label, spec in recipes.items():
        recipe, overrides = spec if isinstance(spec, tuple) else (label, spec)
        out = work / label
        args = [f"out_dir={out}", *common, *overrides]
        if recipe != "mle" and not any(a.startswith("model=") for a in overrides):
            args.append(f"model={work / 'mle' / 'generator'}")
        if quick:
            args += QUICK[recipe]
        args = plan_run(recipe, out, args, retrain)
        if args is None:
            print(f"{label}: reusing {out}/generator", flush=True)
            seconds[label] = 0.0
            continue
        if "resume=true" in args:
            print(f"{label}: resuming the interrupted run in {out} (its time below is the rest of the run only)")
        seconds[label] = run_logged(recipe, args, work / f"{label}.log", in_process=quick)  # a smoke run's here
    return seconds
