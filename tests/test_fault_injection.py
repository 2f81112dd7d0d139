"""Crash safety: a run killed at random moments and resumed each time ends exactly where an
uninterrupted run ends; SIGTERM/SIGINT checkpoint and exit cleanly."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_RUN, run_module
from safetensors.torch import load_file

_SETTINGS = {**TINY_RUN, "disc_dim": 16, "eval_every": 1000, "eval_samples": 8, "print_samples": 0, "keep_checkpoints": 2,
             "device": "cpu"}  # runs are compared bit for bit: on the CPU, as in CI
TINY = [f"{key}={value}" for key, value in _SETTINGS.items()]


def start(out, *extra):
    command = [sys.executable, "-m", "textgan.recipes.scratchgan", f"out_dir={out}", *TINY, *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_step(out) -> int:
    log = out / "metrics.jsonl"
    if not log.is_file():
        return -1
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=-1)


def wait_for_step(process, out, step, timeout=120.0) -> bool:
    """Wait until the run has logged ``step``; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if logged_step(out) >= step:
            return True
        time.sleep(0.02)
    raise TimeoutError("the run made no progress")


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(out / "generator" / "model.safetensors")


def kill_and_resume(out, steps, rng, kills, last):
    """Run to the end, SIGKILLed ``kills`` times at random steps before ``last`` (the final logged
    step), resuming after each."""
    killed = 0
    first = True
    while True:
        process = start(out, *steps, *([] if first else ["resume=true"]))
        first = False
        if killed < kills:
            target = min(logged_step(out) + rng.randint(1, 6), last - 1)
            if wait_for_step(process, out, target):
                time.sleep(rng.uniform(0.0, 0.3))  # anywhere inside a step, or inside a checkpoint write
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed += 1
                continue
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        return killed


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise: CPU training here is deterministic


@pytest.mark.parametrize("kills", [3])
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, kills):
    steps = ["pretrain_steps=4", "steps=40"]  # room for every kill even when one lands late
    reference = start(tmp_path / "reference", *steps)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    out = tmp_path / "killed"
    assert kill_and_resume(out, steps, random.Random(0), kills, logged_step(tmp_path / "reference")) == kills
    assert_same_weights(weights(out), weights(tmp_path / "reference"))
    # the resumed log reads as one run: every step once, in order
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(logged) and len(logged) == len(set(logged))


@pytest.mark.slow
def test_many_sigkills_then_resume_equals_uninterrupted(tmp_path):
    steps = ["pretrain_steps=10", "steps=60"]
    reference = start(tmp_path / "reference", *steps)
    assert reference.wait(timeout=600) == 0
    out = tmp_path / "killed"
    kill_and_resume(out, steps, random.Random(1), 12, logged_step(tmp_path / "reference"))
    assert_same_weights(weights(out), weights(tmp_path / "reference"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_exits_cleanly(tmp_path, signum):
    out = tmp_path / "run"
    process = start(out, "pretrain_steps=2", "steps=400", "checkpoint_every=1000")
    assert wait_for_step(process, out, 3)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "resume=true" in err
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert checkpoints, "no checkpoint written on the signal"
    step = json.loads((checkpoints[-1] / "state.json").read_text())["step"]
    assert step >= 3
    assert f"'textgan sample --model {out}' uses the model of this checkpoint" in err  # and it does:
    sampled = run_module("textgan", "sample", "--model", str(out), "-n", "2")
    assert sampled.returncode == 0 and len(sampled.stdout.splitlines()) == 2, sampled.stderr
    assert f"using its checkpoint of step {step}" in sampled.stderr
    resumed = start(out, "pretrain_steps=2", "steps=400", "checkpoint_every=1000", "resume=true")
    assert wait_for_step(resumed, out, step + 1)
    resumed.send_signal(signal.SIGTERM)
    resumed.communicate(timeout=120)
    assert resumed.returncode == 128 + signal.SIGTERM


NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"  # as safetensors says it


@pytest.mark.parametrize("where", ["checkpoint", "log", "tokenizer"])
def test_a_full_disk_stops_the_run_with_one_line_and_its_checkpoints_as_they_were(tmp_path, monkeypatch, where):
    """A write the disk refuses (ENOSPC: a checkpoint through safetensors, a line of metrics.jsonl, the tokenizer
    through tokenizers, each raising an error of its own kind) used to end the run with a traceback and, for a
    checkpoint, a half-written .tmp_step folder. Now: one line naming the file, exit 1, no partial checkpoint,
    and the same command with resume=true goes on from the newest intact checkpoint."""
    import errno

    from textgan import checkpoint, training

    args = [f"out_dir={tmp_path / 'run'}", "grammar_sentences=200", "d_model=32", "n_layers=1", "n_heads=2",
            "batch_size=8", "eval_every=4", "log_every=1", "checkpoint_every=2", "print_samples=0", "steps=6"]
    real_save, real_json_text = checkpoint.save_file, training.json_text

    def full(*a, **k):
        raise (Exception(NO_SPACE) if where != "log" else OSError(errno.ENOSPC, "No space left on device"))

    if where == "checkpoint":  # the second checkpoint, at step 4, finds the disk full
        saved = []
        monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: full() if saved else saved.append(real_save(*a, **k)))
        said = f"cannot write {tmp_path / 'run' / 'checkpoints' / 'step_00000004'}: No space left on device"
    elif where == "log":  # the log line of step 3
        monkeypatch.setattr(training, "json_text", lambda v, indent=2: full() if v.get("step") == 3
                            else real_json_text(v, indent))
        said = f"cannot write {tmp_path / 'run' / 'metrics.jsonl'}: No space left on device"
    else:
        from transformers import PreTrainedTokenizerFast

        monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", full)
        said = f"cannot write {tmp_path / 'run' / 'tokenizer'}: No space left on device"
    result = run_module("textgan.recipes.mle", *args)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [(f"error: {said}; the run stopped with its checkpoints as they were: free space (or fix the "
                      "disk), then run the same command with resume=true")], result.stderr[-2000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not list(checkpoints.glob(".tmp_*")) if checkpoints.is_dir() else True  # nothing half-written
    monkeypatch.undo()  # space freed
    resumed = run_module("textgan.recipes.mle", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_module("textgan.recipes.mle", *args[1:], f"out_dir={tmp_path / 'ref'}").returncode == 0

    def logged(run):
        return [json.loads(line)["step"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert logged("run") == logged("ref")  # the resumed log reads as one unbroken run's


def test_write_failure_tells_a_full_disk_from_other_errors(tmp_path):
    import errno
    from pathlib import Path

    from textgan.checkpoint import write_failure, writing

    target = Path(tmp_path / "x")
    failed = write_failure(Exception(NO_SPACE), target)
    assert isinstance(failed, OSError) and failed.errno == errno.ENOSPC and failed.filename == str(target)
    assert write_failure(OSError(errno.EROFS, "Read-only file system"), target).errno == errno.EROFS
    assert write_failure(ValueError("a bug"), target) is None
    assert write_failure(OSError(errno.ENOENT, "No such file"), target) is None
    with pytest.raises(ValueError, match="a bug"), writing(target):
        raise ValueError("a bug")
