"""Sampling a run that has not exported its model: it stopped early, or is still training.

A checkpoint records which of its modules the run exports when it ends (the weight average where the
run keeps one) and that model's config, so ``textgan sample --model RUN`` (and every command or config
key that takes a model, and ``textgan transfer``) rebuilds the model from the newest intact checkpoint: the
same model, and the same samples or rewrites, that the export of that step gives.
"""

import json
import shutil

import pytest
import torch
from conftest import run_module as run

from textgan.models.generator import ModelError, load_generator


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


TINY = ["grammar_sentences=200", "d_model=32", "n_layers=1", "n_heads=2", "batch_size=8", "eval_samples=8",
        "eval_every=100", "checkpoint_every=2"]


@pytest.mark.parametrize(("recipe", "extra"), [
    ("mle", ["steps=4"]),
    ("scratchgan", ["pretrain_steps=2", "steps=2"]),  # keeps a weight average, which is what it exports
])
def test_a_run_without_its_export_samples_from_its_newest_checkpoint(recipe, extra, tmp_path):
    out = tmp_path / "run"
    assert run(f"textgan.recipes.{recipe}", f"out_dir={out}", *TINY, *extra).returncode == 0
    exported, _ = load_generator(str(out / "generator"))
    expected = run("textgan", "sample", "--model", str(out / "generator"), "-n", "4", "--seed", "3")
    shutil.rmtree(out / "generator")  # as a run stopped at its last checkpoint, which is step 4 here

    rebuilt, _ = load_generator(str(out))
    assert _same_weights(rebuilt, exported)
    assert not rebuilt.training
    result = run("textgan", "sample", "--model", str(out), "-n", "4", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.stdout
    assert "using its checkpoint of step 4" in result.stderr
    step_2 = run("textgan", "sample", "--model", str(out / "checkpoints" / "step_00000002"), "-n", "4", "--seed", "3")
    assert step_2.returncode == 0 and "of step 2" in step_2.stderr


def test_a_runs_checkpoints_folder_stands_for_its_newest_checkpoint_after_the_run_has_ended(tmp_path):
    out = tmp_path / "run"
    assert run("textgan.recipes.mle", f"out_dir={out}", *TINY, "steps=4").returncode == 0
    for folder, step in ((out / "checkpoints", 4), (out / "checkpoints" / "step_00000002", 2)):
        result = run("textgan", "sample", "--model", str(folder), "-n", "2")
        assert result.returncode == 0, result.stderr
        # the note says which model was asked for, and where the one the run exported is: not "has not exported"
        assert f"checkpoint of step {step} (the model it exported at its end is {out / 'generator'})" in result.stderr
        assert "has not exported" not in result.stderr
    checkpoint_4, _ = load_generator(str(out / "checkpoints"))
    step_4, _ = load_generator(str(out / "checkpoints" / "step_00000004"))
    assert _same_weights(checkpoint_4, step_4)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    out = tmp_path / "run"
    assert run("textgan.recipes.mle", f"out_dir={out}", *TINY, "steps=4").returncode == 0
    shutil.rmtree(out / "generator")
    with open(out / "checkpoints" / "step_00000004" / "tensors.safetensors", "r+b") as f:
        f.truncate(100)
    load_generator(str(out))
    err = capsys.readouterr().err
    assert "fails its checksum" in err and "using its checkpoint of step 2" in err


def test_a_gan_run_started_from_a_model_uses_that_models_tokenizer(trained_generator, tmp_path):
    """model=: the run keeps no tokenizer of its own; the checkpoint names the model it started from."""
    out = tmp_path / "run"
    result = run("textgan.recipes.scratchgan", f"out_dir={out}", f"model={trained_generator}", *TINY,
                 "pretrain_steps=0", "steps=2")
    assert result.returncode == 0, result.stderr
    assert not (out / "tokenizer").exists()
    exported, tokenizer = load_generator(str(out / "generator"))
    shutil.rmtree(out / "generator")
    rebuilt, rebuilt_tokenizer = load_generator(str(out))
    assert _same_weights(rebuilt, exported)
    assert rebuilt_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_runs_whose_checkpoints_cannot_give_a_model_are_one_line_errors(tmp_path):
    out = tmp_path / "run"
    assert run("textgan.recipes.mle", f"out_dir={out}", *TINY, "steps=2").returncode == 0
    shutil.rmtree(out / "generator")
    state = out / "checkpoints" / "step_00000002" / "state.json"
    meta = json.loads(state.read_text())
    del meta["export"]  # as a checkpoint of a style-transfer run, or of textgan before it recorded one
    state.write_text(json.dumps(meta))
    result = run("textgan", "sample", "--model", str(out), "-n", "2")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "resume=true" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    meta["export"] = {"module": "generator", "config": {"model_type": "no-such-architecture"}}  # e.g. remote code
    state.write_text(json.dumps(meta))
    result = run("textgan", "sample", "--model", str(out), "-n", "2")
    assert result.returncode == 2 and "cannot rebuild the run's model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    shutil.rmtree(out / "checkpoints" / "step_00000002")  # a run that has written no checkpoint yet
    with pytest.raises(ModelError, match="no checkpoint yet"):
        load_generator(str(out))


def test_a_gan_run_can_start_from_an_mle_run_that_has_not_exported(tmp_path):
    """model= an MLE run still training (here: its export removed); the GAN run, stopped in turn, reads
    its tokenizer through the MLE run's checkpoint."""
    mle = tmp_path / "mle"
    assert run("textgan.recipes.mle", f"out_dir={mle}", *TINY, "steps=2").returncode == 0
    shutil.rmtree(mle / "generator")
    gan = tmp_path / "gan"
    result = run("textgan.recipes.scratchgan", f"out_dir={gan}", f"model={mle}", *TINY, "pretrain_steps=0", "steps=2")
    assert result.returncode == 0, result.stderr
    shutil.rmtree(gan / "generator")
    _, tokenizer = load_generator(str(gan))
    _, expected = load_generator(str(mle))
    assert tokenizer.get_vocab() == expected.get_vocab()


def test_a_style_transfer_run_without_its_export_rewrites_from_its_checkpoint(style_folder, tmp_path):
    out = tmp_path / "runs" / "style_transfer"  # where textgan transfer looks when no --model is given
    assert run("textgan.recipes.style_transfer", f"data={style_folder}", f"out_dir={out}", "d_model=32", "n_layers=1",
               "n_heads=2", "warmup_steps=2", "steps=4", "batch_size=8", "eval_every=100", "eval_sentences=4",
               "checkpoint_every=2", "disc_dim=16", "device=cpu").returncode == 0
    rewrite = ["transfer", "--from", "neg", "--to", "pos", "--decoding", "rerank", "the food was bad .", "it was rude ."]
    expected = run("textgan", *rewrite, "--model", str(out / "model"))
    assert expected.returncode == 0, expected.stderr
    shutil.rmtree(out / "model")

    result = run("textgan", *rewrite, cwd=tmp_path)  # rerank: the run's discriminator is rebuilt too
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.stdout and "using its checkpoint of step 4" in result.stderr
    assert run("textgan", "sample", "--model", str(out), "--style", "pos", "-n", "2").returncode == 0
    without_style = run("textgan", "sample", "--model", str(out), "-n", "2")
    assert without_style.returncode == 2 and "choose a style with --style (neg, pos)" in without_style.stderr
