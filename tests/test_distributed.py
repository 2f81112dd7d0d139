"""Data-parallel training: gradient averaging across processes (gloo), and every recipe under 2-process torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from textgan import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same data and the same model on every process
        x, y = torch.randn(10, 3), torch.randn(10, 1)
        model = torch.nn.Linear(3, 1)
        # each process: mean loss over its slice of 10 rows (5 each); the average of the two means is the full mean
        loss = ((model(distributed.shard(x)) - distributed.shard(y)) ** 2).mean()
        loss.backward()
        distributed.average_gradients(model)
        averaged = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        full = [p.grad.clone() for p in model.parameters()]
        # a non-finite loss on rank 1 poisons the average on both processes
        distributed.average_gradients(model, poison=rank == 1)
        poisoned = all(torch.isnan(p.grad).all() for p in model.parameters())
        logged = distributed.averaged({"loss": 1.0 + rank, "acc": 0.25 * rank})  # a step's logged values
        result = {"rank": rank, "match": all(torch.allclose(a, f, atol=1e-6) for a, f in zip(averaged, full)),
                  "logged": logged,
                  "poisoned": bool(poisoned), "shard": distributed.shard(list(range(7))),
                  "local": distributed.local_batch_size(7)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _statistics_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Each process holds its rows of one batch, cut to its own longest row, as the sampler returns them."""
    import torch.distributed as dist

    from textgan import distributed, rl

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same global batch on every process
        lengths = torch.tensor([3, 1, 5, 2, 6, 2, 4, 1, 3])  # rank 0: rows 0-4, width 6; rank 1: rows 5-8, width 4
        returns, width = torch.randn(9, 8), 8
        mask = torch.arange(width)[None, :] < lengths[:, None]
        rows = distributed.shard(list(range(9)))
        local_width = int(lengths[rows].max())
        local, local_mask = returns[rows, :local_width], mask[rows, :local_width]
        reduce = distributed.summed(width)
        ema = rl.EMABaseline(width)
        ema.update(local, local_mask)
        full_ema = rl.EMABaseline(width)
        full_ema.update(returns, mask)
        pairs = {  # (with the reduce, on this process's rows) vs (one process, the whole batch, this process's part)
            "batch_mean": (rl.batch_mean_baseline(local, local_mask, reduce), rl.batch_mean_baseline(returns, mask)),
            "leave_one_out": (rl.leave_one_out_baseline(local, local_mask, reduce),
                              rl.leave_one_out_baseline(returns, mask)),
            "center_rewards": (rl.center_rewards(local, local_mask, reduce), rl.center_rewards(returns, mask)),
            "normalize_advantages": (rl.normalize_advantages(local, local_mask, reduce=reduce),
                                     rl.normalize_advantages(returns, mask)),
        }
        match = {name: bool(torch.allclose(ours, whole[rows, :local_width] * local_mask, atol=1e-6))
                 for name, (ours, whole) in ((n, (o * local_mask, w)) for n, (o, w) in pairs.items())}
        match["advantage_scale"] = bool(torch.allclose(rl.advantage_scale(local, local_mask, reduce=reduce),
                                                       rl.advantage_scale(returns, mask)))
        match["ema"] = bool(torch.allclose(ema.value, full_ema.value))
        # a loss: the processes' gradients of loss_mean, averaged, are the whole batch's mean's (17 and 10 tokens
        # here: a mean per process, averaged, would weigh rank 1's tokens more)
        w = torch.zeros(width, requires_grad=True)
        rl.loss_mean((local + w[:local_width]) ** 2, local_mask).backward()
        whole_w = torch.zeros(width, requires_grad=True)
        rl.masked_mean((returns + whole_w) ** 2, mask).backward()
        match["loss_mean"] = bool(torch.allclose(distributed.all_sum(w.grad) / world, whole_w.grad, atol=1e-6))
        match["widths"] = [local_width]
        with open(os.path.join(out_dir, f"stats{rank}.json"), "w") as f:
            json.dump(match, f)
    finally:
        dist.destroy_process_group()


def test_batch_statistics_under_torchrun_are_the_global_batchs(tmp_path):
    """Baselines, centred rewards, advantage normalisation and the gradient of a loss over two processes'
    rows, of different lengths, equal one process's over the whole batch."""
    mp.spawn(_statistics_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"stats{r}.json").read_text()) for r in (0, 1)]
    assert [r.pop("widths") for r in results] == [[6], [4]]
    assert all(all(r.values()) for r in results), results


def test_average_gradients_equals_full_batch_gradient(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["match"] and r["poisoned"] for r in results)
    assert results[0]["shard"] + results[1]["shard"] == list(range(7))
    assert [r["local"] for r in results] == [4, 3]
    assert all(r["logged"] == {"loss": 1.5, "acc": 0.125} for r in results)


def _torchrun(*args, recipe="scratchgan", processes=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                           "-m", f"textgan.recipes.{recipe}", *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


@pytest.mark.parametrize("world_size", [None, "2"])
def test_a_torchrun_process_exits_without_the_interpreters_teardown(world_size):
    """Every recipe ends through exit_process: under torchrun (WORLD_SIZE > 1) it flushes its output and leaves
    with os._exit, so no atexit handler or finalizer runs (gloo's worker threads can abort the process there);
    alone, it exits as usual. Either way the exit status is the recipe's."""
    script = ("import atexit\nfrom textgan.distributed import exit_process\n"
              "atexit.register(lambda: print('teardown ran'))\nprint('written', end='')\nexit_process(3)\n")
    env = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    if world_size:
        env["WORLD_SIZE"] = world_size
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                            check=False)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout == ("written" if world_size else "writtenteardown ran\n")


@pytest.mark.parametrize("module", ["recipes/scratchgan.py", "recipes/seqgan.py", "recipes/mle.py",
                                    "recipes/style_transfer.py", "recipes/classifier.py", "cli.py", "__main__.py"])
def test_every_module_torchrun_starts_ends_through_exit_process(module):
    import textgan

    source = (Path(textgan.__file__).parent / module).read_text(encoding="utf-8")
    ending = source[source.index('if __name__ == "__main__"'):] if module != "__main__.py" else source
    assert "exit_process(" in ending and "sys.exit(" not in ending


def test_the_console_script_under_torchrun_ends_through_exit_process(tmp_path):
    """`torchrun --no-python textgan train RECIPE`: the console script (textgan.cli.run) ends through exit_process,
    not through its generated wrapper's sys.exit. An atexit handler (from a sitecustomize on the path) shows
    whether the interpreter's teardown ran: under torchrun it must not, alone it does."""
    script = Path(sys.executable).with_name("textgan")
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable}: install the project (pip install -e .)")
    (tmp_path / "sitecustomize.py").write_text(  # torchrun's own process has its teardown, and says so by name
        "import atexit, os, sys\n"
        "atexit.register(lambda: print('teardown ran in', os.path.basename(sys.argv[0]), file=sys.stderr))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("WORLD_SIZE", None)
    config = ["device=cpu", "grammar_sentences=300", "d_model=32", "n_layers=1", "n_heads=2", "batch_size=16",
              "steps=2", "eval_every=1000", "eval_samples=8"]
    spread = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "--no-python", str(script), "train", "mle", f"out_dir={tmp_path / 'spread'}", *config],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert spread.returncode == 0, spread.stderr[-3000:]
    assert (tmp_path / "spread" / "generator" / "config.json").is_file()
    assert "teardown ran in textgan" not in spread.stderr and "teardown ran in run.py" in spread.stderr
    alone = subprocess.run([str(script), "train", "mle", f"out_dir={tmp_path / 'alone'}", *config],
                           capture_output=True, text=True, timeout=300, env=env, check=False)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "teardown ran in textgan" in alone.stderr


def test_torchrun_two_processes_train_checkpoint_and_resume(tmp_path):
    out = tmp_path / "run"
    common = [f"out_dir={out}", "device=cpu", "grammar_sentences=300", "d_model=32", "n_layers=1", "n_heads=2", "pretrain_steps=4",
              "batch_size=16", "eval_every=4", "eval_samples=16", "checkpoint_every=4", "log_every=2"]
    first = _torchrun(*common, "steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "step_00000008").is_dir() and (out / "generator" / "config.json").is_file()
    second = _torchrun(*common, "steps=8", "resume=true")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resumed from") == 1  # rank 0 speaks for both
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if s % 2 == 0]
    assert sorted(set(logged)) == list(range(2, 13, 2))  # every logged step present; rank 1 wrote nothing
    train_lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in train_lines if "gen/pg_loss" in r]) == 4  # steps 6, 8, 10, 12 logged once each
    # resumed 4 adversarial steps in, with every process's state in rank 0's checkpoint (the EMA baseline
    # averages the global batch): the same weights as a run that never stopped
    whole = tmp_path / "whole"
    uninterrupted = _torchrun(f"out_dir={whole}", *common[1:], "steps=8")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    resumed, expected = (load_file(path / "generator" / "model.safetensors") for path in (out, whole))
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_one_two_and_three_processes_train_the_same_model(tmp_path):
    """batch_size is the global batch, and a loss is its mean over every process's tokens: MLE on 16 sentences
    of different lengths, 2 steps with 2 processes and then, resumed, 2 with 3 (which take 6, 5 and 5 rows),
    trains the same weights and logs the same losses as one process alone, to float rounding (a mean per
    process, averaged over processes, put the weights 1e-2 apart in 4 steps)."""
    common = ["device=cpu", "grammar_sentences=300", "d_model=32", "n_layers=1", "n_heads=2", "batch_size=16",
              "log_every=1", "eval_every=1000", "eval_samples=8", "checkpoint_every=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    alone = subprocess.run([sys.executable, "-m", "textgan.recipes.mle", f"out_dir={tmp_path / 'alone'}", *common,
                            "steps=4"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for processes, more in ((2, ["steps=2"]), (3, ["steps=4", "resume=true"])):
        result = _torchrun(f"out_dir={tmp_path / 'moved'}", *common, *more, recipe="mle", processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]

    def losses(run):
        return [json.loads(line)["gen/mle_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    expected, weights = (load_file(tmp_path / run / "generator" / "model.safetensors") for run in ("alone", "moved"))
    assert weights.keys() == expected.keys()
    apart = max(float((weights[name] - expected[name]).abs().max()) for name in expected)
    assert apart < 1e-5, f"weights {apart:.2e} from one process's"
    assert losses(tmp_path / "moved") == pytest.approx(losses(tmp_path / "alone"), rel=1e-6)
    assert len(losses(tmp_path / "alone")) == 4


TINY = ["device=cpu", "d_model=32", "n_layers=1", "n_heads=2", "batch_size=8"]
OTHER_RECIPES = {  # recipe: (its tiny arguments, a file of its export)
    "seqgan": (TINY + ["grammar_sentences=300", "pretrain_steps=2", "disc_pretrain_steps=2", "steps=2", "num_rollouts=2",
                       "eval_samples=8"], "generator/config.json"),
    "style_transfer": (TINY + ["steps=4", "warmup_steps=2", "eval_every=4", "eval_sentences=4", "disc_dim=16"],
                       "model/config.json"),
    "classifier": (["device=cpu", "steps=4", "batch_size=8", "dim=16"], "classifier/classifier.json"),
}


@pytest.mark.parametrize("recipe", sorted(OTHER_RECIPES))
def test_every_other_recipe_trains_under_torchrun(recipe, style_folder, tmp_path):
    args, export = OTHER_RECIPES[recipe]
    data = [f"data={style_folder}"] if recipe in ("style_transfer", "classifier") else []
    result = _torchrun(f"out_dir={tmp_path / 'run'}", *data, *args, recipe=recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / export).is_file()
    reports = [line for line in result.stdout.splitlines() if line.startswith(("run folder:", "classifier exported to"))]
    assert len(reports) == 1, result.stdout[-2000:]  # rank 0 alone reports


def test_a_bad_argument_under_torchrun_is_said_once(tmp_path):
    """Every process parses the same arguments, so one of them says what is wrong; none starts a run."""
    result = _torchrun(f"out_dir={tmp_path / 'run'}", "stpes=3", recipe="mle")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown config key 'stpes' (did you mean 'steps'?)"], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_run_folder_in_use_under_torchrun_stops_every_process_with_its_line(tmp_path):
    """Only rank 0 checks the run folder (and takes its lock); its error is every process's, each saying the one
    line, where the other processes used to fail in their next collective with a gloo traceback."""
    import fcntl

    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run is training there
        os.write(fd, b"4242\n")
        result = _torchrun(f"out_dir={folder}", "steps=2", recipe="mle")
    finally:
        os.close(fd)
    assert result.returncode != 0
    said = (f"error: out_dir={folder} is in use by another run (process 4242), which is writing its checkpoints and "
            "logs there; wait for it to end or stop it (a second run would overwrite them), or choose another out_dir")
    # each process says it once; counted, not split into lines: the two write to one pipe at the same moment, and
    # one's newline can land after the other's line (seen once in a fresh clone)
    assert result.stderr.count(said) == 2, result.stderr[-3000:]
    assert sum(line.count("error:") for line in result.stderr.splitlines()) == 2, result.stderr[-3000:]
    assert "[rank1]: Traceback" not in result.stderr and "[rank0]: Traceback" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_an_unknown_recipe_under_torchrun_is_said_once(tmp_path):
    """`torchrun ... -m textgan.cli train NAME`: the CLI's own errors, before any recipe runs, are said once too."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for line, expected in [(["train", "mel", f"out_dir={tmp_path / 'run'}"], "error: unknown recipe 'mel'; choose one of "),
                           (["train", f"out_dir={tmp_path / 'run'}", "mle"], "error: name the recipe first: textgan train mle")]:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 "-m", "textgan.cli", *line], capture_output=True, text=True, timeout=300, env=env,
                                check=False)
        assert result.returncode != 0
        errors = [text for text in result.stderr.splitlines() if text.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(expected), result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_an_alike_error_is_said_by_rank_0_first(rank, monkeypatch, capsys):
    """A rank other than 0 waits before it speaks or exits, for rank 0 to say the error and torchrun to stop it: one
    quiet process exiting at once gets rank 0 stopped before it prints (the flake that this wait mends)."""
    from textgan import distributed

    waits = []
    monkeypatch.setattr(distributed.time, "sleep", waits.append)
    for key, value in {"WORLD_SIZE": "2", "RANK": rank}.items():
        monkeypatch.setenv(key, value)
    distributed.say_for_all("unknown config key 'stpes'")
    assert waits == ([] if rank == "0" else [distributed.ALIKE_ERROR_WAIT_S])
    assert capsys.readouterr().err == "error: unknown config key 'stpes'\n"


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun with 2 processes on a 1-GPU machine: a one-line hint, not NCCL's 'invalid device ordinal'."""
    from textgan import distributed
    from textgan.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1", "RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="--nproc_per_node 1, or device=cpu"):
        distributed.init("auto")
