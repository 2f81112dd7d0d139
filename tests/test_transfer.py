"""Style transfer: text normalization, the prompt layout, decoding, corpus BLEU, the recipe, the commands."""

import json
import random
import re
import shutil

import pytest
import torch
from conftest import NEGATIVE, POSITIVE, _sentences, assert_drawn_from, run_module, shared_data

from textgan.data import DataError
from textgan.models.generator import ModelError
from textgan.tokenization import build_word_tokenizer
from textgan.transfer import (
    Layout,
    Rewriter,
    beam_search,
    greedy,
    load_style_data,
    normalize,
    overlap,
    rerank_choice,
    target_logprobs,
)


def run_cli(*args, stdin=b""):
    return run_module("textgan", *args, stdin=stdin)


def assert_clean_error(result, *words):
    stderr = result.stderr
    assert result.returncode == 2, (result.returncode, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    for word in words:
        assert word in lines[0], lines[0]


# --------------------------------------------------------------------------- text and data


def test_normalize_matches_yelp_tokenization():
    assert normalize("I didn't like it! The food's great, isn't it?") == "i did n't like it ! the food 's great , is n't it ?"
    assert normalize("Wait... (really) \"no\"") == 'wait ... ( really ) " no "'
    tokenized = "we waited 15-20 minutes ... and it was n't worth it ."
    assert normalize(tokenized) == tokenized  # already-tokenized text is left alone


def test_normalize_leaves_yelp_as_it_is():
    folder = shared_data("yelp")
    lines = (folder / "train.neg").read_text(encoding="utf-8").splitlines()[:20000]
    changed = sum(normalize(line) != line for line in lines)
    assert changed / len(lines) < 0.01


def test_load_style_data(style_folder):
    data = load_style_data(style_folder)
    assert data.styles == ["neg", "pos"]
    assert len(data.train["neg"]) == 300 and len(data.test["pos"]) == 12 and len(data.references["neg"]) == 12


def test_load_style_data_holds_out_dev(tmp_path):
    for style in ("a", "b"):
        (tmp_path / f"train.{style}").write_text("\n".join(f"sentence {i} {style}" for i in range(50)))
    data = load_style_data(tmp_path, dev_size=5)
    assert len(data.dev["a"]) == 5 and len(data.train["a"]) == 45
    assert not set(data.dev["a"]) & set(data.train["a"])
    for size in (0, -1):  # said "too few sentences (50) to hold out a dev set"
        with pytest.raises(ValueError, match=f"dev_size must be at least 1, got {size}"):
            load_style_data(tmp_path, dev_size=size)


def test_load_style_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_style_data(tmp_path / "missing")
    (tmp_path / "train.neg").write_text("bad food .\n")
    with pytest.raises(DataError, match="at least two styles"):
        load_style_data(tmp_path)
    (tmp_path / "train.pos").write_bytes(b"good \xff food\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_style_data(tmp_path)


def test_load_style_data_reads_the_sentiment_releases_layout(style_folder, tmp_path):
    """Shen et al.'s and Li et al.'s Yelp/Amazon folders: sentiment.<split>.<0|1>, and reference.<0|1>
    lines of 'source<TAB>rewrite'; read as styles neg and pos, with the same sentences as our layout."""
    ours = load_style_data(style_folder)
    for label, style in (("0", "neg"), ("1", "pos")):
        for split in ("train", "dev", "test"):
            (tmp_path / f"sentiment.{split}.{label}").write_bytes((style_folder / f"{split}.{style}").read_bytes())
        pairs = zip(ours.test[style], ours.references[style])
        (tmp_path / f"reference.{label}").write_text("".join(f"{source}\t{rewrite}\n" for source, rewrite in pairs))
    release = load_style_data(tmp_path)
    assert release == ours
    (tmp_path / "reference.1").write_bytes(b"a\t\xff\n")
    with pytest.raises(DataError, match="UTF-8"):  # a one-line error, not a traceback
        load_style_data(tmp_path)


def test_yelp_folder_loads():
    data = load_style_data(shared_data("yelp"))
    assert data.styles == ["neg", "pos"]
    assert len(data.test["neg"]) == len(data.references["neg"]) == 500


# --------------------------------------------------------------------------- layout and decoding


@pytest.fixture()
def layout_and_model():
    from textgan.models import build_generator
    from textgan.tokenization import build_word_tokenizer, special_ids

    tokenizer = build_word_tokenizer(_sentences(POSITIVE + NEGATIVE, 200, 0))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<sep>", "<style:neg>", "<style:pos>"]})
    bos, eos, pad = special_ids(tokenizer)
    model = build_generator(len(tokenizer), bos_id=bos, eos_id=eos, pad_id=pad, d_model=32, n_layers=2, n_heads=4,
                            max_positions=48).eval()
    return Layout(tokenizer, ["neg", "pos"], 12), model


def test_prompts_are_left_padded(layout_and_model):
    layout, _ = layout_and_model
    ids, _ = layout.encode(["the food was bad .", "bad ."])
    prompt, mask = layout.prompts(ids, [layout.style_ids["neg"]] * 2, [layout.style_ids["pos"]] * 2)
    assert prompt.shape == mask.shape == (2, 8)
    assert mask[1].tolist() == [False] * 3 + [True] * 5
    assert prompt[1, :3].tolist() == [layout.pad_id] * 3
    assert prompt[:, -1].tolist() == [layout.style_ids["pos"]] * 2 and prompt[:, -2].tolist() == [layout.sep_id] * 2


def test_target_logprobs_ignore_left_padding(layout_and_model):
    """A row's scores do not depend on how much padding its batch gave it."""
    layout, model = layout_and_model
    ids, _ = layout.encode(["the food was really bad .", "bad ."])
    src, tgt = [layout.style_ids["neg"]] * 2, [layout.style_ids["pos"]] * 2
    prompt, mask = layout.prompts(ids, src, tgt)
    targets = layout.targets(layout.encode(["the food was good .", "good ."])[0])
    together = target_logprobs(model, prompt, mask, targets)
    alone_prompt, alone_mask = layout.prompts(ids[1:], src[1:], tgt[1:])
    alone = target_logprobs(model, alone_prompt, alone_mask, targets[1:, :3])
    assert torch.allclose(together[1, :3], alone[0], atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_padded_sampling_matches_unpadded(layout_and_model, fast):
    from textgan.sampling import _decoder

    layout, model = layout_and_model
    ids, _ = layout.encode(["the food was really bad .", "bad ."])
    prompt, mask = layout.prompts(ids, [layout.style_ids["neg"]] * 2, [layout.style_ids["pos"]] * 2)
    logits, step, _ = _decoder(model, prompt, 4, fast, mask)
    alone_prompt, _ = layout.prompts(ids[1:], [layout.style_ids["neg"]], [layout.style_ids["pos"]])
    alone_logits, alone_step, _ = _decoder(model, alone_prompt, 4, fast, None)
    assert torch.allclose(logits[1], alone_logits[0], atol=1e-4)
    token = torch.tensor([5, 6])
    assert torch.allclose(step(token)[1], alone_step(token[1:])[0], atol=1e-4)


def test_beam_of_one_is_greedy_and_wider_beams_score_higher(layout_and_model):
    layout, model = layout_and_model
    ids, _ = layout.encode(["the food was really bad .", "bad .", "our waiter was rude ."])
    prompt, mask = layout.prompts(ids, [layout.style_ids["neg"]] * 3, [layout.style_ids["pos"]] * 3)
    args = (model, prompt, mask, 8, layout.eos_id, layout.pad_id)
    g = greedy(*args)
    b1 = beam_search(*args, beam=1)
    assert torch.equal(g, b1[:, : g.shape[1]])

    def score(tokens):
        tokens = tokens.clone()
        mask_t = torch.zeros_like(tokens, dtype=torch.bool)
        for r in range(len(tokens)):  # up to and including the end token
            ends = (tokens[r] == layout.eos_id).nonzero()
            n = int(ends[0]) + 1 if len(ends) else tokens.shape[1]
            mask_t[r, :n] = True
        lp = target_logprobs(model, prompt, mask, tokens)
        return (lp * mask_t).sum(1) / mask_t.sum(1)

    b4 = beam_search(*args, beam=4)
    assert (score(b4) >= score(b1) - 1e-5).all()
    history, ranked = beam_search(*args, beam=4, n_best=True)
    assert history.shape[:2] == ranked.shape == (3, 4)
    assert torch.equal(history[torch.arange(3), ranked.argmax(1)], b4)


def test_beam_search_through_the_static_step_equals_the_plain_step(layout_and_model, monkeypatch):
    """On a GPU, decoding replays step_static from a CUDA graph while beam search reorders the cache
    between steps. The same sequence run eagerly on the CPU: the same hypotheses and scores."""
    from textgan.models.fast_decode import LlamaDecoder

    layout, model = layout_and_model
    ids, _ = layout.encode(["the food was really bad .", "bad .", "our waiter was rude ."])
    prompt, mask = layout.prompts(ids, [layout.style_ids["neg"]] * 3, [layout.style_ids["pos"]] * 3)
    args = (model, prompt, mask, 8, layout.eos_id, layout.pad_id)
    plain = beam_search(*args, beam=4, n_best=True)

    def static_step(decoder):
        def step(token):
            logits = decoder.step_static(token, torch.tensor(decoder.position))
            decoder.position += 1
            return logits
        return step

    monkeypatch.setattr(LlamaDecoder, "graphed_step", static_step)
    static = beam_search(*args, beam=4, n_best=True)
    assert torch.equal(static[0], plain[0])
    assert torch.allclose(static[1], plain[1], atol=1e-5)


def test_token_bias_steers_the_beam_but_not_the_scores(layout_and_model):
    layout, model = layout_and_model
    ids, _ = layout.encode(["the food was really bad .", "bad ."])
    prompt, mask = layout.prompts(ids, [layout.style_ids["neg"]] * 2, [layout.style_ids["pos"]] * 2)
    args = (model, prompt, mask, 6, layout.eos_id, layout.pad_id)
    plain = beam_search(*args, beam=3, n_best=True)
    zero = beam_search(*args, beam=3, n_best=True, token_bias=torch.zeros(2, model.config.vocab_size))
    assert torch.equal(plain[0], zero[0]) and torch.allclose(plain[1], zero[1])

    bias = torch.zeros(2, model.config.vocab_size)
    for row, source in zip(bias, ids):
        row[source] = 100.0  # far above any log-probability gap: only source words are ever chosen
    history, ranked = beam_search(*args, beam=3, n_best=True, token_bias=bias)
    for r, source in enumerate(ids):
        assert set(history[r].flatten().tolist()) <= set(source)
    # the reported scores are the model's own mean log-probabilities, without the bias
    B, K, T = history.shape
    logp = target_logprobs(model, prompt.repeat_interleave(K, 0), mask.repeat_interleave(K, 0), history.view(B * K, T))
    assert torch.allclose(ranked.view(-1), logp.mean(1), atol=1e-4)


# --------------------------------------------------------------------------- corpus BLEU


def test_corpus_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu comes with the textgan[eval] extra")
    from textgan.bleu import corpus_bleu

    rng = random.Random(0)
    for _ in range(100):
        n, vocab = rng.randint(1, 20), rng.choice([3, 8, 30])
        hyps = [" ".join(str(rng.randrange(vocab)) for _ in range(rng.randint(1, 12))) for _ in range(n)]
        refs = [" ".join(str(rng.randrange(vocab)) for _ in range(rng.randint(1, 12))) for _ in range(n)]
        assert abs(corpus_bleu(hyps, refs) - sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score) < 1e-9


def test_corpus_bleu_known_values():
    from textgan.bleu import corpus_bleu

    text = ["the food was great and the staff friendly ."]
    assert corpus_bleu(text, text) == pytest.approx(100.0)
    assert corpus_bleu(["a b c d"], ["e f g h"]) < 1.0
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        corpus_bleu(text, text * 2)


# --------------------------------------------------------------------------- the recipe


def test_recipe_trains_exports_and_reports(transfer_run):
    import json

    from textgan.transfer import Rewriter

    metrics = json.loads((transfer_run / "metrics.json").read_text())
    for key in ("test/accuracy", "test/self_bleu", "test/ref_bleu", "test/copy", "test/neg->pos/ref_bleu"):
        assert key in metrics
    log = [json.loads(line) for line in (transfer_run / "metrics.jsonl").read_text().splitlines()]
    adversarial = [r for r in log if "gen/pg_loss" in r]
    assert adversarial and all(0 <= r["reward/style_prob"] <= 1 and 0 <= r["reward/overlap"] <= 1 for r in adversarial)
    rewriter = Rewriter.load(transfer_run / "model")
    out = rewriter.rewrite(["the food was bad .", "", "the staff was rude ."], "neg", "pos")
    assert len(out) == 3 and out[1] == ""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(transfer_run / "model")  # still a stock causal LM


def test_recipe_resume_equals_uninterrupted(style_folder, tmp_path):
    """Stopping after a checkpoint and resuming gives the same weights as one uninterrupted run."""
    from safetensors.torch import load_file

    from textgan.recipes import style_transfer

    common = {"data": str(style_folder), "d_model": 32, "n_layers": 1, "n_heads": 2, "warmup_steps": 2, "batch_size": 8,
              "eval_every": 100, "eval_sentences": 4, "checkpoint_every": 3, "disc_dim": 16,
              "overlap_weight": 0.5,  # the minimal-edit reward on, so that its path is covered too
              "device": "cpu"}  # compared bit for bit: on the CPU, as in CI
    style_transfer.main(style_transfer.StyleTransferConfig(out_dir=str(tmp_path / "a"), steps=6, **common))
    style_transfer.main(style_transfer.StyleTransferConfig(out_dir=str(tmp_path / "b"), steps=3, **common))
    style_transfer.main(style_transfer.StyleTransferConfig(out_dir=str(tmp_path / "b"), steps=6, resume=True, **common))
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Rewriter.load(tmp_path / "a" / "model").overlap_weight == 0.5  # rerank follows the training reward


def test_noise_and_batches_are_deterministic():
    from textgan.recipes.style_transfer import batch_rows, noisy

    words = list(range(10))
    assert noisy(words, random.Random(1), 0.1, 3.0) == noisy(words, random.Random(1), 0.1, 3.0)
    shuffled = noisy(words, random.Random(2), 0.0, 3.0)
    assert sorted(shuffled) == words and all(abs(shuffled.index(w) - w) <= 3 for w in words)
    assert noisy([7], random.Random(0), 0.99, 0) == [7]  # never empty
    ids = {"a": [[1], [2], [3]], "b": [[4], [5]], "c": [[6]]}
    sources, src, tgt = batch_rows(ids, ["a", "b", "c"], 6, step=3, seed=0)
    assert (sources, src, tgt) == batch_rows(ids, ["a", "b", "c"], 6, step=3, seed=0)
    assert src == [0, 0, 1, 1, 2, 2] and all(s != t for s, t in zip(src, tgt))


def test_recipe_bad_config(tmp_path):
    assert_clean_error(run_cli("train", "style_transfer", f"out_dir={tmp_path / 'r'}"), "data is required")
    assert_clean_error(run_cli("train", "style_transfer", f"data={tmp_path / 'none'}", f"out_dir={tmp_path / 'r'}"),
                       "no such folder")
    assert_clean_error(run_cli("train", "style_transfer", "data=x", "batch_size=-2"), "batch_size")
    assert_clean_error(run_cli("train", "style_transfer", "data=x", "noise_drop=1.5"), "noise_drop")
    assert_clean_error(run_cli("train", "style_transfer", "data=x", "overlap_weight=-1"), "overlap_weight")
    assert_clean_error(run_cli("train", "classifier", "data=x", "stesp=3"), "did you mean 'steps'")


def test_classifier_recipe(style_folder, tmp_path, capsys):
    from textgan.models.classifier import classify, encode_batch, load_classifier
    from textgan.models.generator import load_generator
    from textgan.recipes import classifier

    scores = classifier.main(classifier.ClassifierConfig(data=str(style_folder), out_dir=str(tmp_path / "c"), steps=200,
                                                         batch_size=32, dim=16, filters=16, eval_every=30,
                                                         checkpoint_every=100))
    assert scores["eval/accuracy"] > 0.9, scores  # the sentiment word decides the class
    model, tokenizer, info = load_classifier(tmp_path / "c" / "classifier")
    assert classify(model, tokenizer, ["the food was awful .", "the staff was lovely ."], info["labels"]) == ["neg", "pos"]
    by_run = load_classifier(tmp_path / "c")  # the run folder stands for its classifier
    assert classify(by_run[0], by_run[1], ["the food was awful ."], by_run[2]["labels"]) == ["neg"]
    with pytest.raises(TypeError, match="got one str; wrap it in a list"):  # not a verdict per character
        classify(model, tokenizer, "the food was awful .", info["labels"])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        classify(model, tokenizer, ["the food"], info["labels"], batch_size=0)
    with pytest.raises(TypeError, match="labels must be a list of class names"):  # its characters were the labels
        classify(model, tokenizer, ["the food"], "np")
    with pytest.raises(ValueError, match=r"labels must name the model's 2 classes, got 1: \['neg'\]"):
        classify(model, tokenizer, ["the food was lovely ."], ["neg"])  # an IndexError where it said pos
    sentences = ["the food was awful .", "the staff was lovely .", "what a place ."]
    exported = by_run[0](encode_batch(by_run[1], sentences, by_run[0].pad_id))
    capsys.readouterr()
    load_classifier(tmp_path / "c" / "checkpoints")  # a checkpoint named though the run has ended: where its export is
    assert f"checkpoint of step 200 (the classifier it exported at its end is {tmp_path / 'c' / 'classifier'})" in (
        capsys.readouterr().err)
    # a run that stopped before it exported (or is still training) stands for its newest checkpoint's classifier,
    # here the last step's, so the same as its export
    shutil.rmtree(tmp_path / "c" / "classifier")
    last = max((tmp_path / "c" / "checkpoints").iterdir())
    for folder in (tmp_path / "c", last):
        model, tokenizer, info = load_classifier(folder)
        assert info["labels"] == by_run[2]["labels"] and info["normalize"] == by_run[2]["normalize"]
        assert torch.equal(model(encode_batch(tokenizer, sentences, model.pad_id)), exported)
    assert "checkpoint of step 200" in capsys.readouterr().err
    with pytest.raises(ModelError, match="is a classifier run, not a generator"):  # nor is it a generator
        load_generator(str(tmp_path / "c"))
    tokenizer_json = tmp_path / "c" / "tokenizer" / "tokenizer.json"
    intact = tokenizer_json.read_bytes()
    tokenizer_json.write_bytes(intact[: len(intact) // 2])  # cut short: resume cannot mend it, so it must not say so
    with pytest.raises(ModelError, match="the run's tokenizer is damaged.*fresh out_dir"):
        load_classifier(tmp_path / "c")
    tokenizer_json.unlink()
    with pytest.raises(ModelError, match="tokenizer folder is missing"):
        load_classifier(tmp_path / "c")
    tokenizer_json.write_bytes(intact)
    state = json.loads((last / "state.json").read_text(encoding="utf-8"))  # an earlier textgan's checkpoint
    del state["export"]
    (last / "state.json").write_text(json.dumps(state), encoding="utf-8")
    for folder in (tmp_path / "c", last):
        with pytest.raises(ModelError, match="has not exported its classifier yet.*resume=true"):
            load_classifier(folder)


def test_a_stopped_classifier_run_says_how_to_use_its_checkpoint(style_folder, tmp_path, monkeypatch):
    import signal

    from textgan import training
    from textgan.models.classifier import load_classifier
    from textgan.recipes import classifier

    monkeypatch.setattr(training.stop_request, "signum", signal.SIGINT)  # Ctrl-C during the first step
    out = tmp_path / "c"
    with pytest.raises(training.Interrupted, match=re.escape(f"'classifier={out}' uses the model of this checkpoint")) as stop:
        classifier.main(classifier.ClassifierConfig(data=str(style_folder), out_dir=str(out), steps=50, batch_size=8,
                                                    dim=8, filters=8))
    assert "after step 1;" in str(stop.value)
    assert load_classifier(out)[2]["labels"] == ["neg", "pos"]  # and it does


def test_load_classifier_errors(tmp_path, transfer_run):
    from textgan.models.classifier import load_classifier

    with pytest.raises(ModelError, match="no such folder"):
        load_classifier(tmp_path / "missing")
    for folder in (transfer_run / "model", transfer_run):  # the run has checkpoints too, of a model it exports
        with pytest.raises(ModelError, match="not a textgan classifier"):
            load_classifier(folder)
    with pytest.raises(ModelError, match="is a file"):
        load_classifier(transfer_run / "config.yaml")


def test_truncated_weights_are_a_clear_error(tmp_path, transfer_run):
    """A weights file cut short (a full disk, an interrupted copy): ModelError, not safetensors' own exception."""
    from textgan.models.classifier import load_classifier, save_classifier

    model = Rewriter.load(transfer_run / "model")
    classifier = save_classifier(model.discriminator, model.tokenizer, ["neg", "pos", "rewrite"], tmp_path / "classifier")
    transfer = tmp_path / "transfer"
    shutil.copytree(transfer_run / "model", transfer)
    for weights in (classifier / "model.safetensors", transfer / "discriminator.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="SafetensorError"):
        load_classifier(classifier)
    with pytest.raises(ModelError, match="discriminator.safetensors is damaged"):
        Rewriter.load(transfer)
    (transfer / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="cannot load a causal LM"):
        Rewriter.load(transfer)


# --------------------------------------------------------------------------- textgan transfer / sample --style


def test_transfer_keeps_order_count_and_empty_lines(transfer_run, tmp_path):
    model = str(transfer_run / "model")
    lines = ["the food was bad .", "", "The staff was RUDE!", "   ", "our waiter was bland ."]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n")
    result = run_cli("transfer", "--model", model, "--from", "neg", "--to", "pos", "--input", str(source))
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")[:-1]
    assert len(out) == len(lines)
    assert out[1] == "" and out[3] == "" and all(out[i] for i in (0, 2, 4))
    # the same lines, one at a time, in any batch size, in reverse order: the same rewrites
    result = run_cli("transfer", "--model", model, "--from", "neg", "--to", "pos", "--batch-size", "1", *lines[::-1])
    assert result.stdout.split("\n")[:-1] == out[::-1]
    # standard input, and beam / sampling decoders
    result = run_cli("transfer", "--model", model, "--from", "neg", "--to", "pos", "--decoding", "beam",
                     stdin="\n".join(lines).encode())
    assert result.returncode == 0 and len(result.stdout.split("\n")[:-1]) == len(lines)
    target = tmp_path / "out.txt"
    result = run_cli("transfer", "--model", model, "--from", "pos", "--to", "neg", "--decoding", "sample",
                     "--input", str(source), "--output", str(target))
    assert result.returncode == 0 and len(target.read_text().split("\n")[:-1]) == len(lines)


def test_rerank_picks_the_best_scored_hypothesis(transfer_run):
    """Rerank decoding returns, per sentence, the beam hypothesis with the highest
    log p(y|x)/|y| + log D(target|y) + log p(x|y)/|x|, each scored here alone, unbatched."""
    import torch.nn.functional as F

    from textgan.data import sequence_mask
    from textgan.transfer import word_tensor

    rewriter = Rewriter.load(transfer_run / "model")
    assert rewriter.discriminator is not None and not rewriter.discriminator.training
    layout, model, disc = rewriter.layout, rewriter.model, rewriter.discriminator
    neg, pos = layout.style_ids["neg"], layout.style_ids["pos"]
    sources, _ = layout.encode(["the food was bad .", "our waiter was rude and slow .", "bad ."])
    chosen = rewriter.generate(sources, [neg] * 3, [pos] * 3, decoding="rerank", beam=3)
    for source, picked in zip(sources, chosen):
        prompt, mask = layout.prompts([source], [neg], [pos])
        history, forward = beam_search(model, prompt, mask, layout.max_length + 1, layout.eos_id, layout.pad_id,
                                       beam=3, n_best=True)
        scores = []
        for k, words in enumerate(layout.words(history[0])):
            style = F.log_softmax(disc(word_tensor([words], layout.pad_id)), -1)[0, 1]  # class 1: pos
            back, back_mask = layout.prompts([words], [pos], [neg])
            targets = layout.targets([source])
            real = sequence_mask(targets, layout.eos_id)
            content = (target_logprobs(model, back, back_mask, targets) * real).sum() / real.sum()
            scores.append((float((forward[0, k] + style + content).detach()), words))
        assert picked == max(scores, key=lambda s: s[0])[1]


def test_rerank_needs_the_discriminator(transfer_run, tmp_path):
    import json

    bare = tmp_path / "bare"
    shutil.copytree(transfer_run / "model", bare)
    info = json.loads((bare / "transfer.json").read_text())
    del info["discriminator"]
    (bare / "transfer.json").write_text(json.dumps(info))
    assert Rewriter.load(bare).discriminator is None
    base = ("transfer", "--from", "neg", "--to", "pos", "--decoding", "rerank", "the food was bad .")
    assert_clean_error(run_cli(*base, "--model", str(bare)), "discriminator", "--decoding beam")
    result = run_cli(*base, "--model", str(transfer_run / "model"), "--beam", "2")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    (transfer_run / "model" / "discriminator.safetensors").rename(tmp_path / "moved.safetensors")
    try:  # named in transfer.json but gone: a damaged folder, one line
        assert_clean_error(run_cli(*base, "--model", str(transfer_run / "model")), "damaged")
    finally:
        (tmp_path / "moved.safetensors").rename(transfer_run / "model" / "discriminator.safetensors")


def test_transfer_cuts_overlong_lines(transfer_run):
    result = run_cli("transfer", "--model", str(transfer_run / "model"), "--from", "neg", "--to", "pos",
                     " ".join(["bad"] * 10_000))
    assert result.returncode == 0
    assert len(result.stdout.split("\n")[:-1]) == 1
    assert "cut to that length" in result.stderr


def test_transfer_errors(transfer_run, trained_generator, tmp_path):
    model = str(transfer_run / "model")
    base = ("transfer", "--model", model, "--from", "neg", "--to", "pos")
    assert_clean_error(run_cli("transfer", "--model", model, "--from", "neg", "--to", "happy", "x"), "unknown style 'happy'", "neg, pos")
    assert_clean_error(run_cli("transfer", "--model", model, "--from", "neg", "--to", "neg", "x"), "two different styles")
    assert_clean_error(run_cli("transfer", "--model", str(tmp_path / "missing"), "--from", "neg", "--to", "pos", "x"), "no such folder")
    assert_clean_error(run_cli("transfer", "--model", str(trained_generator), "--from", "neg", "--to", "pos", "x"),
                       "not a style-transfer model")
    assert_clean_error(run_cli(*base, "--input", str(tmp_path / "none.txt")), "no such file")
    assert_clean_error(run_cli(*base, "--input", str(tmp_path)), "directory")
    source = tmp_path / "source.txt"
    source.write_text("the food was bad .\n")
    assert_clean_error(run_cli(*base, "--input", str(source), "--output", str(source)), "is the --input file")
    assert source.read_text() == "the food was bad .\n"  # not replaced by its rewrite
    empty, blank, bad = tmp_path / "empty.txt", tmp_path / "blank.txt", tmp_path / "bad.txt"
    empty.write_text("")
    blank.write_text("\n  \n\n")
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    assert_clean_error(run_cli(*base, "--input", str(empty)), "no sentences")
    assert_clean_error(run_cli(*base, "--input", str(blank)), "no sentences")
    assert_clean_error(run_cli(*base, "--input", str(bad)), "UTF-8")
    assert_clean_error(run_cli(*base, stdin=b"\xff\n"), "UTF-8")
    assert_clean_error(run_cli(*base, "fine", "a \udcff byte"), "SENTENCE 2 is not valid UTF-8")  # argv's raw bytes
    assert_clean_error(run_cli("transfer", "--model", "", "--from", "neg", "--to", "pos", "x"), "no model was named")
    assert_clean_error(run_cli(*base, "--output", str(tmp_path / "no" / "out.txt"), "x"), "cannot write")
    assert_clean_error(run_cli(*base, "--decoding", "topk", "x"))
    assert_clean_error(run_cli(*base, "--beam", "0", "x"))
    assert_clean_error(run_cli(*base, "--decoding", "sample", "--temperature", "0", "x"), "temperature")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(model, mismatched)
    build_word_tokenizer([f"w{i}" for i in range(3000)]).save_pretrained(mismatched)
    assert_clean_error(run_cli("transfer", "--model", str(mismatched), "--from", "neg", "--to", "pos", "x"),
                       "do not belong together")
    # a failure leaves no output file behind
    assert not (tmp_path / "out.txt").exists()


def test_transfer_default_model(tmp_path, transfer_run):
    """Without --model: the recipe's default out_dir, then the README's Yelp preset's; neither is a one-line error."""
    command = ("transfer", "--from", "neg", "--to", "pos", "the food was bad .")
    assert_clean_error(run_module("textgan", *command, cwd=tmp_path), "no model at runs/style_transfer/model or runs/yelp_transfer/model")
    shutil.copytree(transfer_run / "model", tmp_path / "runs" / "yelp_transfer" / "model")
    result = run_module("textgan", *command, cwd=tmp_path)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr


def test_a_style_prompt_is_continued_from_the_models_distribution(transfer_run):
    """The word after the prompt is drawn from the rewriter's distribution given the style prompt and the
    prompt's words (mean log-ratio against the distribution without them within 5 standard errors of the KL)."""
    import torch

    from textgan.transfer import Rewriter

    rewriter = Rewriter.load(transfer_run / "model")
    lines = rewriter.sample("pos", 2000, prompt="the food was", seed=1, batch_size=1000)
    assert all(line.split()[:3] == ["the", "food", "was"] for line in lines)
    layout, style = rewriter.layout, rewriter.layout.style_id("pos")
    start, _ = layout.prompts([[]], [style], [style])
    words = rewriter.tokenizer.convert_tokens_to_ids(["the", "food", "was"])
    with torch.no_grad():
        given, alone = (torch.log_softmax(rewriter.model(ids).logits[0, -1], -1)
                        for ids in (torch.cat([start, torch.tensor([words])], 1), start))
    drawn = torch.tensor([rewriter.tokenizer.convert_tokens_to_ids(line.split()[3]) if len(line.split()) > 3
                          else layout.eos_id for line in lines])
    assert_drawn_from(given, alone, drawn)


def test_sample_in_a_style(transfer_run, trained_generator):
    model = str(transfer_run / "model")
    result = run_cli("sample", "--model", model, "--style", "pos", "-n", "7")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split("\n")[:-1]) == 7
    assert_clean_error(run_cli("sample", "--model", model, "--style", "meh"), "unknown style", "neg, pos")
    assert_clean_error(run_cli("sample", "--model", model), "--style", "(neg, pos)")
    assert_clean_error(run_cli("sample", "--model", str(trained_generator), "--style", "pos"), "not a style-transfer model")
    prompted = run_cli("sample", "--model", model, "--style", "pos", "-n", "5", "--prompt", "The food")  # normalized
    assert prompted.returncode == 0, prompted.stderr
    assert all(line.startswith("the food") for line in prompted.stdout.splitlines()), prompted.stdout
    assert_clean_error(run_cli("sample", "--model", model, "--style", "pos", "--prompt", "the zorblax"),
                       "has no 'zorblax'")
    by_run = run_cli("sample", "--model", str(transfer_run), "--style", "pos", "-n", "7")  # the run folder: its model/
    assert by_run.returncode == 0 and by_run.stdout == result.stdout, by_run.stderr


def test_style_transfer_with_bf16_and_compile(style_folder, tmp_path):
    """precision=bf16 and compile=true through warm-up and adversarial steps: finite losses, fp32 export."""
    import json
    import math

    from textgan.recipes import style_transfer

    out = tmp_path / "run"
    style_transfer.main(style_transfer.StyleTransferConfig(
        data=str(style_folder), out_dir=str(out), d_model=32, n_layers=1, n_heads=2, steps=4, warmup_steps=2,
        batch_size=8, eval_every=4, eval_sentences=4, checkpoint_every=4, log_every=1, disc_dim=16,
        precision="bf16", compile=True))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [v for r in records for k, v in r.items() if k.endswith("loss")]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    rewriter = Rewriter.load(out / "model")
    assert all(p.dtype == torch.float32 for p in rewriter.model.parameters())


def test_style_transfer_sample_precision_bf16(style_folder, tmp_path, decoder_dtypes):
    """sample_precision=bf16: the adversarial steps sample their rewrites with bf16 projections."""
    from textgan.recipes import style_transfer

    style_transfer.main(style_transfer.StyleTransferConfig(
        data=str(style_folder), out_dir=str(tmp_path / "run"), d_model=32, n_layers=1, n_heads=2, steps=4,
        warmup_steps=2, batch_size=8, eval_every=4, eval_sentences=4, checkpoint_every=4, log_every=1, disc_dim=16,
        precision="bf16", sample_precision="bf16"))
    assert decoder_dtypes.count(torch.bfloat16) >= 2  # the two adversarial steps (warm-up steps do not sample)


def test_rerank_weights_steer_the_choice(transfer_run):
    """With both reward weights at 0 rerank is plain beam search; with only the content weight it
    picks the hypothesis that reconstructs the source best, as candidates() scores them."""
    rewriter = Rewriter.load(transfer_run / "model")
    layout = rewriter.layout
    neg, pos = layout.style_ids["neg"], layout.style_ids["pos"]
    sources, _ = layout.encode(["the food was bad .", "our waiter was rude and slow .", "bad .", "never again ."])
    args = (sources, [neg] * 4, [pos] * 4)
    words, terms = rewriter.candidates(*args, beam=3)
    assert len(words) == 12 and all(t.shape == (4, 3) for t in terms.values())
    assert terms["copy"].tolist() == [[words[b * 3 + k] == sources[b] for k in range(3)] for b in range(4)]
    rewriter.set_rerank(style_weight=0.0, content_weight=0.0, allow_copy=True)
    assert rewriter.generate(*args, decoding="rerank", beam=3) == rewriter.generate(*args, decoding="beam", beam=3)
    rewriter.content_weight = 1000.0
    best = (terms["forward"] + 1000.0 * terms["content"]).argmax(1)
    assert rewriter.generate(*args, decoding="rerank", beam=3) == [words[b * 3 + int(k)] for b, k in enumerate(best)]
    by_hand = torch.tensor([[overlap(words[b * 3 + k], sources[b]) for k in range(3)] for b in range(4)])
    assert torch.allclose(terms["overlap"].cpu(), by_hand)
    rewriter.set_rerank(content_weight=0.0, overlap_weight=1000.0)
    best = (terms["forward"] + 1000.0 * terms["overlap"]).argmax(1)
    assert rewriter.generate(*args, decoding="rerank", beam=3) == [words[b * 3 + int(k)] for b, k in enumerate(best)]
    rewriter.set_rerank(overlap_weight=0.0, lm_style_weight=1000.0)
    best = (terms["forward"] + 1000.0 * terms["lm_style"]).argmax(1)
    assert rewriter.generate(*args, decoding="rerank", beam=3) == [words[b * 3 + int(k)] for b, k in enumerate(best)]


def test_lm_style_term_by_hand(transfer_run):
    """lm_style = log p(y | <pos> <sep> <pos>) - log p(y | <neg> <sep> <neg>) per token (end token
    included), each from one plain forward pass of the LM over the unpadded sequence."""
    rewriter = Rewriter.load(transfer_run / "model")
    layout = rewriter.layout
    neg, pos = layout.style_ids["neg"], layout.style_ids["pos"]
    sources, _ = layout.encode(["the food was bad .", "never again ."])
    words, terms = rewriter.candidates(sources, [neg] * 2, [pos] * 2, beam=3)

    def per_token(y, style):
        ids = torch.tensor([[style, layout.sep_id, style, *y, layout.eos_id]])
        with torch.no_grad():
            logprobs = torch.log_softmax(rewriter.model(input_ids=ids).logits.float(), -1)
        return sum(logprobs[0, 2 + t, token] for t, token in enumerate([*y, layout.eos_id])) / (len(y) + 1)

    by_hand = torch.tensor([[per_token(words[b * 3 + k], pos) - per_token(words[b * 3 + k], neg) for k in range(3)]
                            for b in range(2)])
    assert torch.allclose(terms["lm_style"].cpu(), by_hand, atol=1e-4)
    _, skipped = rewriter.candidates(sources, [neg] * 2, [pos] * 2, beam=3, lm_style=False)  # saves two passes
    assert not skipped["lm_style"].any() and torch.equal(skipped["content"], terms["content"])


def test_overlap_by_hand():
    """Mean of unigram and bigram F1 with clipped counts, worked out by hand."""
    assert overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert overlap([4, 5], [1, 2, 3]) == 0.0
    assert overlap([], [1, 2]) == 0.0 and overlap([], []) == 0.0
    # unigrams: hyp {1, 2, 9} vs src {1, 2, 3, 4}: 2 matched, F1 = 4/7; bigrams (1,2) shared of 2 and 3: F1 = 2/5
    assert abs(overlap([1, 2, 9], [1, 2, 3, 4]) - (4 / 7 + 2 / 5) / 2) < 1e-12
    # clipping: hyp "1 1 1" vs src "1 2": one unigram match (F1 2/5), bigram (1,1) unmatched
    assert abs(overlap([1, 1, 1], [1, 2]) - (2 / 5) / 2) < 1e-12
    assert overlap([7], [7]) == 0.5  # one-word sentences have no bigrams on either side


def test_transfer_cli_takes_rerank_weights(transfer_run):
    base = ("transfer", "--model", str(transfer_run / "model"), "--from", "neg", "--to", "pos", "--decoding", "rerank",
            "--beam", "2", "the food was bad .")
    result = run_cli(*base, "--style-weight", "0.5", "--content-weight", "2")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    result = run_cli(*base, "--allow-copy", "--content-weight", "1000")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert_clean_error(run_cli(*base, "--content-weight", "-1"), "--content-weight")
    assert_clean_error(run_cli(*base, "--style-weight", "inf"), "--style-weight")
    result = run_cli(*base, "--overlap-weight", "3")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert_clean_error(run_cli(*base, "--overlap-weight", "-2"), "--overlap-weight")
    result = run_cli(*base, "--copy-bias", "1.5")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert_clean_error(run_cli(*base, "--copy-bias", "nan"), "--copy-bias")
    result = run_cli(*base, "--lm-style-weight", "0.5")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert_clean_error(run_cli(*base, "--lm-style-weight", "-1"), "--lm-style-weight")


def test_rewrite_candidates_rerank_to_what_rewrite_returns(transfer_run):
    """A weight sweep over rewrite_candidates picks, for the model's weights, rewrite(decoding='rerank')'s lines."""
    rewriter = Rewriter.load(transfer_run / "model")
    lines = ["the food was bad .", "", "our waiter was rude and slow .", "bad .", "the xylophonist was rude ."]

    def reranked(texts, terms, overlap_weight=0.0):  # rerank_choice written out by hand
        score = terms["forward"] + rewriter.style_weight * terms["style"] + rewriter.content_weight * terms["content"]
        score = score + overlap_weight * terms["overlap"]
        copies = terms["copy"] & ~terms["copy"].all(1, keepdim=True)
        return [row[int(k)] for row, k in zip(texts, score.masked_fill(copies, float("-inf")).argmax(1))]

    texts, terms = rewriter.rewrite_candidates(lines, "neg", "pos", beam=3, batch_size=2)
    assert len(texts) == len(lines) and texts[1] == ["", "", ""] and all(t.shape == (5, 3) for t in terms.values())
    assert reranked(texts, terms) == rewriter.rewrite(lines, "neg", "pos", decoding="rerank", beam=3, batch_size=2)
    rewriter.set_rerank(overlap_weight=2.5)
    assert reranked(texts, terms, 2.5) == rewriter.rewrite(lines, "neg", "pos", decoding="rerank", beam=3, batch_size=2)
    assert terms["copy"].tolist() == [[text == line and bool(line) for text in row] for row, line in zip(texts, lines)]
    # with a copy bias the candidates change, and rerank picks among the steered beam's
    steered, terms = rewriter.rewrite_candidates(lines, "neg", "pos", beam=3, copy_bias=50.0, batch_size=2)
    assert steered != texts
    assert all(set(text.split()) <= set(line.split()) for row, line in zip(steered, lines[:4]) for text in row)
    rewriter.set_rerank(copy_bias=50.0)
    assert reranked(steered, terms, 2.5) == rewriter.rewrite(lines, "neg", "pos", decoding="rerank", beam=3, batch_size=2)


def test_rerank_passes_over_copies_unless_allowed():
    """A copy of the source loses to any other hypothesis, whatever its score; a row of copies
    keeps one; allow_copy restores the plain argmax."""
    terms = {"forward": torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.0, -2.0], [0.0, -5.0, -9.0]]),
             "style": torch.zeros(3, 3), "content": torch.tensor([[0.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
             "copy": torch.tensor([[True, False, False], [True, True, False], [True, True, True]])}
    assert rerank_choice(terms, 1.0, 1.0).tolist() == [1, 2, 0]
    assert rerank_choice(terms, 1.0, 1.0, allow_copy=True).tolist() == [0, 0, 0]


def test_set_rerank_checks_its_weights(transfer_run):
    rewriter = Rewriter.load(transfer_run / "model")
    weights = (rewriter.style_weight, rewriter.content_weight)
    rewriter.set_rerank(content_weight=2)
    assert (rewriter.style_weight, rewriter.content_weight, rewriter.allow_copy) == (weights[0], 2.0, False)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="style_weight"):
            rewriter.set_rerank(style_weight=bad)
    assert rewriter.style_weight == weights[0]
    with pytest.raises(ValueError, match="copy_bias"):
        rewriter.set_rerank(copy_bias=-0.5)
    with pytest.raises(ValueError, match="lm_style_weight"):
        rewriter.set_rerank(lm_style_weight=float("nan"))
    with pytest.raises(ValueError, match="content_weight"):  # the constructor checks them the same way
        Rewriter(rewriter.model, rewriter.tokenizer, rewriter.styles, 20, content_weight=-1.0)


def test_rewriter_calls_out_of_range_are_refused_by_name(transfer_run):
    """One string in place of the sentences was rewritten a character a sentence; beam=0 failed with 'cannot
    reshape tensor of 0 elements', beam=-1 with 'Repeats must be non-negative'; sample(n=-1) returned []."""
    rewriter = Rewriter.load(transfer_run / "model")
    with pytest.raises(TypeError, match="expected a list of sentences, got one str; wrap it in a list"):
        rewriter.rewrite("the food was cold .", "neg", "pos")
    with pytest.raises(TypeError, match="got one str"):
        rewriter.rewrite_candidates("the food was cold .", "neg", "pos")
    for beam in (0, -1):
        with pytest.raises(ValueError, match=f"beam and batch_size must be at least 1, got beam={beam}"):
            rewriter.rewrite(["the food"], "neg", "pos", decoding="beam", beam=beam)
        with pytest.raises(ValueError, match="beam and batch_size must be at least 1"):
            rewriter.rewrite_candidates(["the food"], "neg", "pos", beam=beam)
    with pytest.raises(ValueError, match="batch_size=0"):
        rewriter.rewrite(["the food"], "neg", "pos", batch_size=0)
    with pytest.raises(ValueError, match="n must be zero or more, got -1"):
        rewriter.sample(rewriter.styles[0], -1)
    assert rewriter.sample(rewriter.styles[0], 0) == [] and rewriter.rewrite([], "neg", "pos") == []


def test_rerank_weights_survive_save_and_load(transfer_run, tmp_path):
    rewriter = Rewriter.load(transfer_run / "model")
    rewriter.set_rerank(style_weight=0.5, content_weight=2.0, overlap_weight=3.0, copy_bias=1.5, lm_style_weight=0.7)
    again = Rewriter.load(rewriter.save(tmp_path / "saved"))
    assert (again.style_weight, again.content_weight, again.overlap_weight, again.copy_bias,
            again.lm_style_weight) == (0.5, 2.0, 3.0, 1.5, 0.7)
    exported = Rewriter.load(transfer_run / "model")
    # the recipe's export: no minimal-edit term, bias or LM style term
    assert exported.overlap_weight == exported.copy_bias == exported.lm_style_weight == 0.0


def test_load_refuses_bad_rerank_weights(transfer_run, tmp_path):
    import json

    damaged = tmp_path / "damaged"
    shutil.copytree(transfer_run / "model", damaged)
    info = json.loads((damaged / "transfer.json").read_text())
    info["discriminator"]["style_weight"] = -2.0
    (damaged / "transfer.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="damaged"):
        Rewriter.load(damaged)


def test_saving_a_classifier_or_rewriter_refuses_a_file_or_no_folder(tmp_path, transfer_run, monkeypatch):
    """save_classifier("") wrote its files into the current folder, and into a file it failed with FileExistsError;
    Rewriter.save goes through export_generator, which refuses both too."""
    from textgan.models.classifier import save_classifier

    model = Rewriter.load(transfer_run / "model")
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    for out, message in (("", "no folder was named"), (tmp_path / "afile", "afile is a file; give a folder")):
        with pytest.raises(ValueError, match=message):
            save_classifier(model.discriminator, model.tokenizer, ["neg", "pos", "rewrite"], out)
        with pytest.raises(ValueError, match=message):
            model.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
