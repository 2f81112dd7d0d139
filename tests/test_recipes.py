"""Each recipe for a few steps on a tiny config, in-process."""

import dataclasses
import json
import math

import pytest
import torch
from conftest import TINY_RUN
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from textgan.checkpoint import list_checkpoints
from textgan.recipes import mle, scratchgan, seqgan
from textgan.sampling import sample_texts

# runs compared bit for bit run on the CPU, so that a GPU machine checks what CI checks;
# resuming on a GPU is tests/test_cuda.py's
CPU = {"device": "cpu"}

RECIPES = {
    "mle": (mle, mle.MLEConfig, {"steps": 4}),
    "scratchgan": (scratchgan, scratchgan.ScratchGANConfig, {"steps": 4, "pretrain_steps": 2, "disc_dim": 16,
                                                             "center_rewards": True}),
    "seqgan": (seqgan, seqgan.SeqGANConfig, {"steps": 2, "pretrain_steps": 2, "disc_pretrain_steps": 2, "num_rollouts": 2,
                                                       "disc_dim": 16}),
}


def _config(name, tmp_path, **extra):
    module, cls, specific = RECIPES[name]
    return module, cls(out_dir=str(tmp_path / name), **{**TINY_RUN, **specific, **extra})


def _metrics(run) -> list[dict]:
    """The records of a run folder's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_generator(run_a, run_b, atol=1e-6, rtol=0.0):
    """The two run folders exported the same generator (same parameter names, values within tolerance)."""
    a = AutoModelForCausalLM.from_pretrained(run_a / "generator").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run_b / "generator").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol)


def _trained_and_resumed(tmp_path, extra) -> list[dict]:
    """A scratchgan run of ``extra`` (``pretrain_steps=0``, 6 steps), and the same run crashed in
    its 6th adversarial step (after the checkpoint of step 4, with TINY_RUN's checkpoint_every=2) and
    resumed, end with the same generator. -> the unbroken run's metrics records."""
    module, full = _config("scratchgan", tmp_path / "full", **extra)
    module.main(full)
    step, calls = scratchgan.adversarial_step, []

    def crashing(*args):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("simulated crash")
        return step(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scratchgan, "adversarial_step", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            module.main(_config("scratchgan", tmp_path / "part", **extra)[1])
    module.main(_config("scratchgan", tmp_path / "part", **extra, resume=True)[1])
    _assert_same_generator(tmp_path / "full" / "scratchgan", tmp_path / "part" / "scratchgan")
    return _metrics(tmp_path / "full" / "scratchgan")


def _initial_weights(cls, config):
    """The generator the recipe starts from (same seed, same construction)."""
    from textgan.training import Run, prepare, seed_everything

    seed_everything(config.seed)
    return {k: v.detach().cpu().clone() for k, v in prepare(config, Run(config)).generator.state_dict().items()}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_checkpoints_and_exports(name, tmp_path):
    module, config = _config(name, tmp_path)
    before = _initial_weights(type(config), config)
    result = module.main(config)
    run = tmp_path / name

    # losses finite, metrics written
    records = _metrics(run)
    losses = [v for r in records for k, v in r.items() if k.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert (run / "config.yaml").is_file() and (run / "samples.txt").read_text().strip()
    saved = json.loads((run / "metrics.json").read_text())
    assert 0 <= saved["eval/grammatical"] <= 1 and saved == result

    # parameters changed, export loads as a standard causal LM
    model = AutoModelForCausalLM.from_pretrained(run / "generator")
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tokenizer = AutoTokenizer.from_pretrained(run / "generator")
    generate = pipeline("text-generation", model=str(run / "generator"))
    out = generate("a man", max_new_tokens=5, do_sample=True)
    text = out[0]["generated_text"]
    assert text == "a man" or text.startswith("a man "), text  # the continuation keeps its space
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings

    # checkpoints: complete, no pickle
    checkpoints = list_checkpoints(run / "checkpoints")
    assert checkpoints and all((c / "tensors.safetensors").is_file() for c in checkpoints)


@pytest.mark.parametrize("name", ["mle", "scratchgan"])
def test_resume_continues_where_it_stopped(name, tmp_path):
    module, full = _config(name, tmp_path / "full", **CPU)
    module.main(full)
    _, part = _config(name, tmp_path / "part", steps=RECIPES[name][2]["steps"] - 2, **CPU)
    module.main(part)  # "crashes" after its last checkpoint
    _, resumed = _config(name, tmp_path / "part", resume=True, **CPU)
    module.main(resumed)
    records = _metrics(tmp_path / "part" / name)
    steps = [r["step"] for r in records if any(k.endswith("loss") for k in r)]
    assert steps == sorted(steps) and steps[-1] == full.steps + getattr(full, "pretrain_steps", 0)
    _assert_same_generator(tmp_path / "full" / name, tmp_path / "part" / name)


def test_samples_file_keeps_one_block_per_evaluation_across_resumes(tmp_path):
    """Resuming a finished run evaluates its last step again: its block is replaced, not repeated. Blocks
    are found by their '# step N' lines, so a sample holding that text mid-line does not confuse them."""
    from textgan.data import sample_blocks
    from textgan.training import Run

    module, config = _config("mle", tmp_path, **CPU)  # 4 steps, evaluations at 2 and 4 (the final one)
    module.main(config)
    samples = tmp_path / "mle" / "samples.txt"
    before = samples.read_text()
    module.main(_config("mle", tmp_path, resume=True, **CPU)[1])
    assert [step for step, _ in sample_blocks(samples.read_text().splitlines())] == [2, 4]
    assert samples.read_text() == before  # the same samples: the same weights, the same seed

    samples.write_text("# step 2\na man # step 7 says hi\n# step 4\nthe end\n")
    Run(config).truncate_log(2)
    assert samples.read_text() == "# step 2\na man # step 7 says hi\n"


def test_a_folder_with_someone_elses_config_yaml_is_not_a_run_folder(tmp_path):
    """out_dir=. in a project that has its own config.yaml: the run would overwrite it (and clear the folder's
    samples.txt as an earlier run's), so it stops with one line and leaves both as they were."""
    from textgan.config import ConfigError

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("learning_rate: 3\n")
    (folder / "samples.txt").write_text("my own data\n")
    module, config = _config("mle", tmp_path, **CPU)
    with pytest.raises(ConfigError, match="holds a config.yaml that is not a textgan run's"):
        module.main(dataclasses.replace(config, out_dir=str(folder)))
    assert (folder / "config.yaml").read_text() == "learning_rate: 3\n"
    assert (folder / "samples.txt").read_text() == "my own data\n"


def _folder(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_run_stopped_by_bad_input_leaves_the_earlier_run_in_its_folder(tmp_path):
    """A new run in an earlier run's out_dir replaces it only once it starts: a typo in data= or
    max_length too short for the corpus stops it with the earlier checkpoints, logs and tokenizer intact."""
    from textgan.config import ConfigError
    from textgan.data import DataError

    module, config = _config("mle", tmp_path)
    module.main(config)
    run = tmp_path / "mle"
    before = _folder(run)
    assert (run / "checkpoints").is_dir() and (run / "tokenizer" / "tokenizer.json").is_file()
    for change, error in (({"data": str(tmp_path / "typo.txt")}, DataError), ({"max_length": 1}, ConfigError),
                          ({"data": str(tmp_path / "typo.txt"), "resume": True}, DataError)):
        _, again = _config("mle", tmp_path, **change)
        with pytest.raises(error):
            module.main(again)
        assert _folder(run) == before, change


def _hold_lock(run, owner="4242"):
    """Hold ``run``'s folder lock as another process would (a descriptor of this process's own, which flock
    sets against every other): returns the descriptor, whose closing lets go."""
    import fcntl
    import os

    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner}\n".encode(), 0)
    return fd


@pytest.mark.skipif(not hasattr(__import__("os"), "pwrite"), reason="flock run-folder locks are POSIX only")
def test_a_run_folder_another_run_is_writing_is_refused_and_left_as_it_was(tmp_path):
    """Two runs in one out_dir (the same command started twice, or resume=true while the run still trains) used
    to write into each other: a fresh start removed the other's checkpoints, a resume appended its steps to the
    other's log. The first run's lock on the folder refuses the second, before it loads anything where the
    first had started already, or when it starts; the folder stays as it was, and once the lock is let go
    (the holder ends, or is killed) runs go on there."""
    import os

    from textgan.config import ConfigError
    from textgan.training import Run

    module, config = _config("mle", tmp_path)
    module.main(config)
    run = tmp_path / "mle"
    fd = _hold_lock(run)  # ended: finish() let go of the lock, so "another process" can take it
    before = _folder(run)
    try:
        for resume in (False, True):
            with pytest.raises(ConfigError, match=r"out_dir=.*mle is in use by another run \(process 4242\)"):
                module.main(dataclasses.replace(config, resume=resume))
            assert _folder(run) == before, resume
        late = Run(dataclasses.replace(config, out_dir=str(tmp_path / "late")))  # the other run starts meanwhile
        other = _hold_lock(tmp_path / "late", owner="")
        with pytest.raises(ConfigError, match=r"late is in use by another run, which is writing"):
            late.start()
        os.close(other)
    finally:
        os.close(fd)
    resumed = module.main(dataclasses.replace(config, resume=True))
    assert resumed["eval/nll_valid"] > 0
    os.close(_hold_lock(run))  # let go of at the end again


@pytest.mark.skipif(not hasattr(__import__("os"), "pwrite"), reason="flock run-folder locks are POSIX only")
def test_a_run_that_stopped_in_this_process_does_not_lock_out_its_resumption(tmp_path):
    """A run that raised (Ctrl-C, a diverged loss) may live on in a traceback, its lock with it: the same
    process resumes all the same (a notebook, a test), and the lock goes once every Run holding it is gone."""
    import gc

    from textgan.checkpoint import _HELD
    from textgan.training import Run

    module, config = _config("mle", tmp_path)
    folder = str((tmp_path / "mle").resolve())
    stopped = Run(config)
    stopped.start()
    assert folder in _HELD
    module.main(dataclasses.replace(config, resume=True))
    assert folder in _HELD  # still the stopped run's
    del stopped
    gc.collect()
    assert folder not in _HELD


def test_resume_with_another_model_size_is_refused_and_changes_nothing(tmp_path):
    """resume=true with d_model changed: intact checkpoints that do not fit are not 'damaged'; skipping them would
    start over and overwrite them. A one-line ConfigError instead, with the run folder as it was."""
    from textgan.config import ConfigError

    module, config = _config("mle", tmp_path)
    module.main(config)
    run = tmp_path / "mle"
    before = _folder(run)
    _, wider = _config("mle", tmp_path, resume=True, d_model=64, steps=config.steps + 2)
    with pytest.raises(ConfigError, match=r"cannot resume: .*do not fit the model.*config.yaml"):
        module.main(wider)
    assert _folder(run) == before


def test_a_fresh_run_clears_only_an_earlier_runs_files(tmp_path):
    """out_dir=. in a folder of one's own: a samples.txt that no run wrote (no config.yaml beside it) is kept."""
    own = tmp_path / "project"
    own.mkdir()
    (own / "samples.txt").write_text("my own notes\n")
    mle.main(mle.MLEConfig(out_dir=str(own), **{**TINY_RUN, "steps": 2}))
    assert (own / "samples.txt").read_text().startswith("my own notes\n")
    assert (own / "config.yaml").is_file()
    mle.main(mle.MLEConfig(out_dir=str(own), **{**TINY_RUN, "steps": 2}))  # now a run folder: a new run replaces it
    assert not (own / "samples.txt").read_text().startswith("my own notes")


def test_a_fresh_run_removes_the_earlier_runs_exported_model(tmp_path):
    """Until a new run in an earlier run's out_dir exports its own model, its folder must not stand for the
    earlier run's: during training or after a crash, textgan sample --model RUN samples the new run's newest
    checkpoint (or says there is none yet). resume=true keeps the export, and a folder without the export's
    file (a project's own model/) stays. The earlier run's curves.png (textgan plot) goes with its log."""
    from textgan.models.generator import ModelError, load_generator
    from textgan.training import Run

    run = tmp_path / "run"
    mle.main(mle.MLEConfig(out_dir=str(run), **{**TINY_RUN, "steps": 2}))
    assert (run / "generator" / "config.json").is_file()
    (run / "model").mkdir()
    (run / "model" / "notes.txt").write_text("mine\n")
    (run / "curves.png").write_bytes(b"textgan plot's image of the run's log")
    Run(mle.MLEConfig(out_dir=str(run), **{**TINY_RUN, "steps": 2}, resume=True)).start()
    assert (run / "generator" / "config.json").is_file() and (run / "curves.png").is_file()
    Run(mle.MLEConfig(out_dir=str(run), **{**TINY_RUN, "steps": 2})).start()  # a new run, stopped before a checkpoint
    assert not (run / "generator").exists() and (run / "model" / "notes.txt").read_text() == "mine\n"
    assert not (run / "curves.png").exists()  # not the new run's curves
    with pytest.raises(ModelError, match="exported no model and written no checkpoint yet"):
        load_generator(str(run))


def test_a_logged_value_that_is_not_finite_is_null_in_the_log(tmp_path):
    """A diverged loss (nan) or an unbounded score (inf) in metrics.jsonl: null, which every JSON reader takes,
    not Python's NaN / Infinity, which strict ones (jq, JavaScript) refuse; textgan plot draws it as a gap."""
    from textgan.curves import read_log
    from textgan.training import Run

    run = Run(mle.MLEConfig(out_dir=str(tmp_path / "run"), **TINY_RUN))
    run.start()
    run.log(1, {"gen/loss": math.nan, "eval/nll": math.inf, "disc/loss": 0.5})
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert record["gen/loss"] is None and record["eval/nll"] is None and record["disc/loss"] == 0.5
    series, skipped = read_log(tmp_path / "run" / "metrics.jsonl")
    assert skipped == 0 and math.isnan(series["gen/loss"][1][0]) and series["disc/loss"][1] == [0.5]


def test_a_crash_while_exporting_leaves_no_part_of_a_model(tmp_path, monkeypatch, capsys):
    """The export is written beside the run's folder name and renamed into place: a crash halfway (a full disk)
    leaves no generator/ with a config.json and half its weights, so the run folder stands for its newest
    checkpoint, as for any run that has not exported yet, and the next export replaces the leftovers."""
    from textgan.models import generator
    from textgan.models.generator import load_generator

    run = tmp_path / "run"
    config = mle.MLEConfig(out_dir=str(run), **{**TINY_RUN, "steps": 2})
    mle.main(config)
    whole = generator.export_generator

    def crash(model, tokenizer, out_dir):
        whole(model, tokenizer, out_dir)
        (out_dir / "model.safetensors").write_bytes(b"cut short")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generator, "export_generator", crash)
    with pytest.raises(OSError, match="No space left"):
        mle.main(dataclasses.replace(config, seed=1))  # a new run over the earlier one
    assert not (run / "generator").exists()
    model, _ = load_generator(str(run))
    assert "using its checkpoint" in capsys.readouterr().err
    assert model.config.vocab_size > 0
    monkeypatch.setattr(generator, "export_generator", whole)
    mle.main(dataclasses.replace(config, seed=1, resume=True))  # finishes the export
    assert (run / "generator" / "model.safetensors").stat().st_size > 1000
    assert not (run / ".generator.partial").exists()


def test_scratchgan_discriminator_lm_head_trains_and_resumes(tmp_path):
    """From scratch with D's auxiliary LM loss and reward increments: the LM loss is logged and
    falls, and a resumed run (LM head restored from the checkpoint) ends where an unbroken one does."""
    extra = {"pretrain_steps": 0, "steps": 6, "disc_lm_weight": 1.0, "reward_increments": True, "reward": "logit",
             "normalize_advantages": True, "expected_reward": False, **CPU}
    records = _trained_and_resumed(tmp_path, extra)
    lm = [r["disc/lm_loss"] for r in records if "disc/lm_loss" in r]
    assert len(lm) == 6 and all(math.isfinite(v) for v in lm) and lm[-1] < lm[0]


def test_expected_reward_gradient_by_hand():
    """G's gradient from D's token values, against the formula: at each real position,
    π_v (q_v − E_π q) for the expected value, plus (1[v = x_t] − π_v) · discount·R_(t+1) for the later ones."""
    from types import SimpleNamespace

    from textgan.rl import EMABaseline

    torch.manual_seed(0)
    B, T, V, discount = 3, 4, 5, 0.5
    logits = torch.randn(B, T, V, requires_grad=True)
    values = torch.randn(B, T, V)
    tokens = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2:] = False
    generator = lambda input_ids: SimpleNamespace(logits=logits)

    class Discriminator(torch.nn.Module):
        def token_values(self, tokens):
            assert not self.training, "D's values for G are read without dropout"
            return values

    discriminator = Discriminator()
    config = SimpleNamespace(center_rewards=False, discount=discount, baseline="none", normalize_advantages=False,
                             entropy_coef=0.0)
    fake = SimpleNamespace(tokens=tokens, mask=mask)
    ids = torch.cat([torch.zeros(B, 1, dtype=torch.long), tokens], 1)
    loss, rewards, _ = scratchgan.expected_reward_update(config, generator, discriminator, EMABaseline(T), fake, ids)
    loss.backward()
    assert discriminator.training  # back to training mode for its own updates

    expected = torch.zeros(B, T, V)
    pi = torch.softmax(logits.detach(), -1)
    n = int(mask.sum())
    for b in range(B):
        r = [float(values[b, t, tokens[b, t]]) if mask[b, t] else 0.0 for t in range(T)]
        assert rewards[b].tolist() == pytest.approx(r)
        for t in range(T):
            if not mask[b, t]:
                continue
            later = sum(discount ** (s - t) * r[s] for s in range(t + 1, T))
            onehot = torch.nn.functional.one_hot(tokens[b, t], V).float()
            expected[b, t] = -(pi[b, t] * (values[b, t] - (pi[b, t] * values[b, t]).sum()) + (onehot - pi[b, t]) * later) / n
    torch.testing.assert_close(logits.grad, expected)


def test_entropy_bonus_adds_its_gradient_to_the_expected_reward_update():
    """entropy_coef c adds −c · (mean entropy over real positions) to G's loss: its gradient, on top of the
    plain update's, is c · π_v (log π_v + H) / n at each real position (H the position's entropy)."""
    from types import SimpleNamespace

    from textgan.rl import EMABaseline

    torch.manual_seed(1)
    B, T, V, c = 3, 4, 5, 0.3
    values, tokens = torch.randn(B, T, V), torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 1:] = False
    ids = torch.cat([torch.zeros(B, 1, dtype=torch.long), tokens], 1)
    start = torch.randn(B, T, V)

    class Discriminator(torch.nn.Module):
        def token_values(self, tokens):
            return values

    grads = []
    for coef in (0.0, c):
        logits = start.clone().requires_grad_(True)
        config = SimpleNamespace(center_rewards=False, discount=0.5, baseline="none", normalize_advantages=False,
                                 entropy_coef=coef)
        loss, _, _ = scratchgan.expected_reward_update(config, lambda input_ids, z=logits: SimpleNamespace(logits=z),
                                                       Discriminator(), EMABaseline(T),
                                                       SimpleNamespace(tokens=tokens, mask=mask), ids)
        loss.backward()
        grads.append(logits.grad)
    logp = torch.log_softmax(start, -1)
    entropy = -(logp.exp() * logp).sum(-1, keepdim=True)
    expected = c * logp.exp() * (logp + entropy) * mask[..., None] / mask.sum()
    torch.testing.assert_close(grads[1] - grads[0], expected)


def test_scratchgan_expected_reward_trains_and_resumes(tmp_path):
    """From scratch with D's token values: losses finite, D's token values restored on resume
    (a resumed run ends where an unbroken one does), and no auxiliary LM loss beside them."""
    extra = {"pretrain_steps": 0, "steps": 6, "expected_reward": True, "center_rewards": True,
             "normalize_advantages": True, **CPU}
    records = _trained_and_resumed(tmp_path, extra)
    losses = [r["gen/pg_loss"] for r in records if "gen/pg_loss" in r]
    assert len(losses) == 6 and all(math.isfinite(r["disc/loss"]) for r in records if "disc/loss" in r)
    from textgan.config import ConfigError

    with pytest.raises(ConfigError, match="disc_lm_weight"):
        scratchgan.ScratchGANConfig(expected_reward=True, disc_lm_weight=1.0).check()


def test_weight_average_by_hand():
    from textgan.training import WeightAverage

    model = torch.nn.BatchNorm1d(2)  # a parameter and buffers
    average = WeightAverage(model, decay=0.9)
    expected = model.weight.detach().clone()
    for n in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
            model.running_mean.add_(2.0)
        average.update(model)
        decay = min(0.9, (1 + n) / (10 + n))  # warmed up: 2/11, 3/12, 4/13
        expected = decay * expected + (1 - decay) * model.weight.detach()
        torch.testing.assert_close(average.model.weight, expected)
    assert torch.equal(average.model.running_mean, model.running_mean) and average.updates == 3
    assert not average.model.weight.requires_grad and not average.model.training
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


@pytest.mark.parametrize("name, extra, part", [
    ("scratchgan", {"pretrain_steps": 0, "steps": 6}, {"steps": 4}),
    ("seqgan", {}, {"steps": 0}),  # 2 MLE + 2 D pretraining steps, then 2 adversarial
])
def test_gan_recipes_export_the_weight_average_and_resume_it(name, extra, part, tmp_path):
    """gen_average: the exported generator is the average, not the last weights, and a resumed run
    (average and its warm-up count restored) ends where an unbroken one does."""
    from safetensors.torch import load_file

    extra = {**extra, "gen_average": 0.5, "gen_lr": 1e-3, **CPU}
    module, full = _config(name, tmp_path / "full", **extra)
    module.main(full)
    run = tmp_path / "full" / name
    exported = AutoModelForCausalLM.from_pretrained(run / "generator").state_dict()
    tensors = load_file(list_checkpoints(run / "checkpoints")[-1] / "tensors.safetensors")
    for key, value in exported.items():
        torch.testing.assert_close(value, tensors[f"model/generator_average/{key}"])
    assert any(not torch.equal(tensors[f"model/generator/{k}"], v) for k, v in exported.items())
    module.main(_config(name, tmp_path / "part", **{**extra, **part})[1])
    module.main(_config(name, tmp_path / "part", **{**extra, "resume": True})[1])
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "part" / name / "generator").state_dict()
    for key in exported:
        torch.testing.assert_close(exported[key], resumed[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["mle", "scratchgan", "seqgan", "classifier", "style_transfer"])
def test_a_config_made_in_python_is_checked_before_the_run_starts(name, tmp_path):
    """``main(Config(...))`` from Python meets a bad value as the command line does: a ConfigError naming it,
    before the run reads data or makes its folder (it used to reach the data loader, which failed with
    "max(): Expected reduction dim to be specified" for batch_size=0)."""
    from textgan.config import ConfigError
    from textgan.recipes import load_recipe

    module, config_cls = load_recipe(name)
    data = {"data": str(tmp_path / "styles")} if name in ("classifier", "style_transfer") else {}  # they need one
    config = config_cls(out_dir=str(tmp_path / "run"), batch_size=0, **data)
    with pytest.raises(ConfigError, match="batch_size"):
        module.main(config)
    assert not (tmp_path / "run").exists()


def test_gen_average_must_be_below_one():
    from textgan.config import ConfigError

    with pytest.raises(ConfigError, match="gen_average"):
        scratchgan.ScratchGANConfig(gen_average=1.0).check()


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_seqgan_mle_weight_adds_the_real_batchs_nll_gradient(weight, tiny_generator, word_tokenizer, sentences):
    """With a discriminator that scores every sentence alike, every reward is equal and the batch-mean
    baseline leaves no advantage: the policy gradient is zero, and an SGD step of rate 1 moves G by
    exactly -mle_weight times the gradient of the real batch's NLL (not at all at mle_weight=0)."""
    from types import SimpleNamespace

    from textgan.data import encode, sequence_mask
    from textgan.losses import mle_loss
    from textgan.models.generator import token_logprobs
    from textgan.rl import EMABaseline
    from textgan.sampling import sample
    from textgan.tokenization import special_ids

    bos, eos, pad = special_ids(word_tokenizer)
    config = seqgan.SeqGANConfig(mle_weight=weight, num_rollouts=2, grad_clip=1e6, baseline="batch_mean")
    config.check()
    generator = tiny_generator.train()
    real = encode(sentences[:6], word_tokenizer, 20)[0]  # (6, 22): BOS, words, EOS, padding
    prompt = torch.full((4, 1), bos, dtype=torch.long)
    torch.manual_seed(0)
    fake = sample(generator, prompt, 8, eos_id=eos, pad_id=pad)

    class Indifferent(torch.nn.Module):
        def forward(self, tokens):
            return torch.zeros(tokens.shape[0])

    generator.zero_grad()
    mle_loss(token_logprobs(generator, real), sequence_mask(real[:, 1:], eos)).backward()
    expected = {n: p.detach() - weight * p.grad for n, p in generator.named_parameters()}
    generator.zero_grad()
    step = seqgan.adversarial_step(config, generator, Indifferent(), torch.optim.SGD(generator.parameters(), lr=1.0),
                                   EMABaseline(9), prompt, SimpleNamespace(eos_id=eos, pad_id=pad), fake, real)
    assert step["gen/pg_loss"] == 0.0 and ("gen/mle_loss" in step) == (weight > 0)
    for name, param in generator.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], atol=1e-6, rtol=1e-5)


def test_gen_lr_decay_by_hand():
    from textgan.config import ConfigError
    from textgan.training import gen_lr_at

    def schedule(decay):
        config = scratchgan.ScratchGANConfig(steps=10, gen_lr=0.3, gen_lr_decay=decay)
        config.check()
        return [gen_lr_at(config, step) for step in range(10)]

    assert schedule(0.0) == pytest.approx([0.3] * 10)
    assert schedule(0.3) == pytest.approx([0.3] * 8 + [0.2, 0.1])  # n = 3: 3/3, 2/3, 1/3 of gen_lr
    assert schedule(1.0) == pytest.approx([0.03 * (10 - s) for s in range(10)])
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="gen_lr_decay"):
            scratchgan.ScratchGANConfig(gen_lr_decay=bad).check()


@pytest.mark.parametrize("name, extra", [
    ("scratchgan", {"pretrain_steps": 2, "steps": 4}),
    ("seqgan", {"steps": 4}),  # after 2 MLE and 2 D pretraining steps
])
def test_gan_recipes_follow_the_gen_lr_schedule(name, extra, tmp_path):
    """Each adversarial step uses (and logs) the scheduled learning rate, counted from the first
    adversarial step; MLE pretraining keeps mle_lr."""
    module, config = _config(name, tmp_path, gen_lr=1e-3, gen_lr_decay=0.5, **extra, **CPU)
    module.main(config)
    logged = [r["gen/lr"] for r in _metrics(tmp_path / name) if "gen/lr" in r]
    assert logged == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3 / 2])  # n = 2: 2/2, then 1/2 of gen_lr


def test_mle_recipe_follows_its_lr_decay(tmp_path):
    """lr_decay: the MLE recipe's rate falls over the last fraction of its steps, and is logged."""
    from textgan.config import ConfigError

    module, config = _config("mle", tmp_path, lr=1e-3, lr_decay=0.5, **CPU)  # 4 steps: n = 2
    module.main(config)
    assert [r["gen/lr"] for r in _metrics(tmp_path / "mle") if "gen/lr" in r] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="lr_decay"):
            mle.MLEConfig(lr_decay=bad).check()


def test_scratchgan_with_gen_lr_decay_resumes_where_it_stopped(tmp_path):
    """A run that crashes in its decay phase and is resumed with the same config ends with the
    generator of an unbroken run: the schedule depends on the step alone."""
    extra = {"pretrain_steps": 0, "steps": 6, "gen_lr": 1e-3, "gen_lr_decay": 0.5, **CPU}
    records = _trained_and_resumed(tmp_path, extra)  # crashes in step 6, after one decayed step
    assert [r["gen/lr"] for r in records if "gen/lr" in r] == pytest.approx([1e-3] * 4 + [2e-3 / 3, 1e-3 / 3])


def test_disc_lm_weight_must_not_be_negative():
    from textgan.config import ConfigError

    with pytest.raises(ConfigError, match="disc_lm_weight"):
        scratchgan.ScratchGANConfig(disc_lm_weight=-1.0).check()


def test_text_file_corpus_with_bpe(tmp_path):
    from textgan.grammar import Grammar

    path = tmp_path / "mine.txt"
    path.write_text("\n".join(Grammar.default().sample_corpus(200, seed=5)) + "\n")
    module, config = _config("mle", tmp_path, data=str(path), tokenizer="bpe", vocab_size=120, steps=2)
    result = module.main(config)
    assert "eval/grammatical" not in result and math.isfinite(result["eval/nll_valid"])


def test_pretrained_generator_folder(tmp_path):
    """model=DIR: a saved causal LM (here one exported by a previous run) is the generator."""
    module, config = _config("mle", tmp_path / "first", steps=2)
    module.main(config)
    exported = tmp_path / "first" / "mle" / "generator"
    module, config = _config("scratchgan", tmp_path / "second", model=str(exported), steps=2, pretrain_steps=0)
    result = module.main(config)
    assert math.isfinite(result["eval/nll_valid"])


@pytest.mark.parametrize("name", ["scratchgan", "seqgan"])
def test_gpt2_style_generator_folder(name, tmp_path):
    """model=DIR with a GPT-2 model and tokenizer: byte-level BPE, one token for begin, end and (absent) padding,
    and no fast decoder (sampling and rollouts take the Hugging Face forward). Trains, evaluates and exports."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from textgan.grammar import Grammar

    lines = Grammar.default().sample_corpus(300, seed=0)
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(lines) + "\n")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=300, special_tokens=["<|endoftext|>"])
    bpe.save(str(tmp_path / "bpe.json"))
    end = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_file=str(tmp_path / "bpe.json"), bos_token=end, eos_token=end, unk_token=end)
    assert tokenizer.pad_token is None
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    module, config = _config(name, tmp_path, model=str(tmp_path / "gpt2"), data=str(data))
    result = module.main(config)
    assert math.isfinite(result["eval/nll_valid"])
    exported = tmp_path / name / "generator"
    assert AutoModelForCausalLM.from_pretrained(exported).config.model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(exported).eos_token == end
    # a byte-level prompt: any text encodes, and the sentences start with it
    texts = sample_texts(AutoModelForCausalLM.from_pretrained(exported), AutoTokenizer.from_pretrained(exported), 3,
                         prompt="a man", max_length=12)
    assert len(texts) == 3 and all(text.startswith("a man") for text in texts), texts


def _losses(run) -> list[float]:
    return [v for r in _metrics(run) for k, v in sorted(r.items()) if k.endswith("loss")]


@pytest.mark.parametrize("name", list(RECIPES))
def test_bf16_autocast_trains_and_keeps_fp32_weights(name, tmp_path):
    module, config = _config(name, tmp_path / "bf16", precision="bf16")
    module.main(config)
    _, reference = _config(name, tmp_path / "fp32")
    module.main(reference)
    bf16, fp32 = _losses(tmp_path / "bf16" / name), _losses(tmp_path / "fp32" / name)
    assert len(bf16) == len(fp32) and all(math.isfinite(v) for v in bf16)
    assert bf16 != fp32  # the matmuls really ran in bfloat16 ...
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)  # ... and the first loss agrees to bf16 precision
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / name / "generator")
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", ["scratchgan", "seqgan"])
def test_sample_precision_bf16_samples_training_batches_with_bf16_projections(name, tmp_path, decoder_dtypes):
    """sample_precision=bf16: the training steps' samplers (and SeqGAN's rollout completers) decode with
    bf16 projections; evaluation samples in fp32, and the opt-in flag is off again after the run."""
    from textgan import sampling
    from textgan.config import ConfigError

    made = decoder_dtypes
    module, config = _config(name, tmp_path / "fp32", precision="bf16")
    module.main(config)
    assert made and set(made) == {None}  # bf16 training, fp32 sampling: the default
    made.clear()
    module, config = _config(name, tmp_path / "bf16", precision="bf16", sample_precision="bf16")
    result = module.main(config)
    assert math.isfinite(result["eval/nll_valid"])
    assert made.count(torch.bfloat16) >= config.steps and None in made  # training batches; evaluation samples
    assert sampling.BF16_SAMPLING is False
    with pytest.raises(ConfigError, match="needs precision=bf16"):
        _config(name, tmp_path / "x", sample_precision="bf16")[1].check()


def test_compiled_forward_matches_eager(tmp_path):
    module, compiled = _config("mle", tmp_path / "compiled", compile=True)
    module.main(compiled)
    _, eager = _config("mle", tmp_path / "eager")
    module.main(eager)
    assert _losses(tmp_path / "compiled" / "mle") == pytest.approx(_losses(tmp_path / "eager" / "mle"), rel=1e-4)
    # compiled in place: parameter names unchanged, values close
    _assert_same_generator(tmp_path / "compiled" / "mle", tmp_path / "eager" / "mle", atol=1e-4, rtol=1e-3)


def test_precision_must_be_known():
    from textgan.config import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        mle.MLEConfig(precision="fp16").check()


@pytest.mark.parametrize("name", list(RECIPES))
def test_same_config_and_seed_give_identical_samples_and_metrics(name, tmp_path):
    module, first = _config(name, tmp_path / "a")
    module.main(first)
    _, second = _config(name, tmp_path / "b")
    module.main(second)
    a, b = tmp_path / "a" / name, tmp_path / "b" / name
    assert (a / "samples.txt").read_text() == (b / "samples.txt").read_text()
    scores_a, scores_b = (json.loads((run / "metrics.json").read_text()) for run in (a, b))
    assert scores_a.pop("time/total_s") >= 0 and scores_b.pop("time/total_s") >= 0  # the only wall-clock entry
    assert scores_a == scores_b
    assert _losses(a) == _losses(b)
