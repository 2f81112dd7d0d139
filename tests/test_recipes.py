"""Each recipe for a few steps on a tiny config, in-process."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from textgan.checkpoint import list_checkpoints
from textgan.recipes import mle, scratchgan, seqgan

TINY = {"grammar_sentences": 200, "d_model": 32, "n_layers": 1, "n_heads": 2, "batch_size": 8, "eval_samples": 16,
        "eval_every": 2, "log_every": 1, "checkpoint_every": 2, "print_samples": 1}

RECIPES = {
    "mle": (mle, mle.MLEConfig, {"steps": 4}),
    "scratchgan": (scratchgan, scratchgan.ScratchGANConfig, {"steps": 4, "pretrain_steps": 2, "disc_dim": 16}),
    "seqgan": (seqgan, seqgan.SeqGANConfig, {"steps": 2, "pretrain_steps": 2, "disc_pretrain_steps": 2, "num_rollouts": 2,
                                                       "disc_dim": 16}),
}


def _config(name, tmp_path, **extra):
    module, cls, specific = RECIPES[name]
    return module, cls(out_dir=str(tmp_path / name), **{**TINY, **specific, **extra})


def _initial_weights(cls, config):
    """The generator the recipe starts from (same seed, same construction)."""
    from textgan.training import Run, prepare, seed_everything

    seed_everything(config.seed)
    return {k: v.clone() for k, v in prepare(config, Run(config)).generator.state_dict().items()}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_checkpoints_and_exports(name, tmp_path):
    module, config = _config(name, tmp_path)
    before = _initial_weights(type(config), config)
    result = module.main(config)
    run = tmp_path / name

    # losses finite, metrics written
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
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
    assert out[0]["generated_text"].startswith("a man")
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings

    # checkpoints: complete, no pickle
    checkpoints = list_checkpoints(run / "checkpoints")
    assert checkpoints and all((c / "tensors.safetensors").is_file() for c in checkpoints)


@pytest.mark.parametrize("name", ["mle", "scratchgan"])
def test_resume_continues_where_it_stopped(name, tmp_path):
    module, full = _config(name, tmp_path / "full")
    module.main(full)
    _, part = _config(name, tmp_path / "part", steps=RECIPES[name][2]["steps"] - 2)
    module.main(part)  # "crashes" after its last checkpoint
    _, resumed = _config(name, tmp_path / "part", resume=True)
    module.main(resumed)
    records = [json.loads(line) for line in (tmp_path / "part" / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if any(k.endswith("loss") for k in r)]
    assert steps == sorted(steps) and steps[-1] == full.steps + getattr(full, "pretrain_steps", 0)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / name / "generator").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "part" / name / "generator").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


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
