import torch
from torch.testing import assert_close

from textgan.models import token_logprobs
from textgan.sampling import Rollout, filter_logits, sample
from textgan.tokenization import special_ids


def _prompt(tokenizer, batch):
    bos, _, _ = special_ids(tokenizer)
    return torch.full((batch, 1), bos, dtype=torch.long)


def test_kv_cache_sampling_matches_full_recompute(tiny_generator, word_tokenizer):
    _, eos, pad = special_ids(word_tokenizer)
    prompt = _prompt(word_tokenizer, 16)
    rollout = sample(tiny_generator, prompt, 12, eos_id=eos, pad_id=pad)
    assert isinstance(rollout, Rollout)
    # the log-probs collected step by step with the cache equal one full teacher-forced pass
    with torch.no_grad():
        full = token_logprobs(tiny_generator, torch.cat([prompt, rollout.tokens], 1))
    assert_close(rollout.logprobs, full * rollout.mask, atol=1e-5, rtol=1e-5)


def test_rollout_record_is_consistent(tiny_generator, word_tokenizer):
    _, eos, pad = special_ids(word_tokenizer)
    rollout = sample(tiny_generator, _prompt(word_tokenizer, 32), 10, eos_id=eos, pad_id=pad)
    assert rollout.tokens.shape == rollout.logprobs.shape == rollout.mask.shape
    assert torch.equal(rollout.lengths, rollout.mask.sum(1))
    for row, n in zip(rollout.tokens, rollout.lengths):
        assert (row[n:] == pad).all()
        if n < rollout.tokens.shape[1] or row[n - 1] == eos:
            assert row[n - 1] == eos
        assert (row[: n - 1] != eos).all()
    assert (rollout.logprobs[~rollout.mask] == 0).all()
    assert (rollout.logprobs[rollout.mask] < 0).all()


def test_prompt_with_prefix_and_finished_rows(tiny_generator, word_tokenizer):
    bos, eos, pad = special_ids(word_tokenizer)
    a = word_tokenizer.convert_tokens_to_ids("a")
    prompt = torch.tensor([[bos, a, a], [bos, a, eos]])
    rollout = sample(tiny_generator, prompt, 5, eos_id=eos, pad_id=pad)
    assert (rollout.tokens[1] == pad).all() and rollout.lengths[1] == 0
    assert rollout.lengths[0] >= 1


def test_top_k_and_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits, top_p=0.85))[0].tolist()
    assert kept == [True, True, True, False]
    cooled = torch.softmax(filter_logits(logits, temperature=0.5), -1)
    assert cooled[0, 0] > 0.5


def test_top_k_sampling_only_returns_allowed_tokens(tiny_generator, word_tokenizer):
    _, eos, pad = special_ids(word_tokenizer)
    prompt = _prompt(word_tokenizer, 64)
    with torch.no_grad():
        first_logits = tiny_generator(input_ids=prompt[:1]).logits[0, -1]
    allowed = set(torch.topk(first_logits, 3).indices.tolist())
    rollout = sample(tiny_generator, prompt, 1, eos_id=eos, pad_id=pad, top_k=3)
    assert set(rollout.tokens[:, 0].tolist()) <= allowed
