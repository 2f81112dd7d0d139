import copy

import pytest
import torch
from conftest import assert_drawn_from
from torch.testing import assert_close

from textgan.models import token_logprobs
from textgan.sampling import Rollout, filter_logits, sample
from textgan.tokenization import special_ids


def _prompt(tokenizer, batch):
    bos, _, _ = special_ids(tokenizer)
    return torch.full((batch, 1), bos, dtype=torch.long)


@pytest.mark.parametrize("fast", [True, False], ids=["static-cache decoder", "hf forward"])
def test_kv_cache_sampling_matches_full_recompute(tiny_generator, word_tokenizer, fast):
    _, eos, pad = special_ids(word_tokenizer)
    prompt = _prompt(word_tokenizer, 16)
    rollout = sample(tiny_generator, prompt, 12, eos_id=eos, pad_id=pad, fast=fast)
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


def test_samples_are_ordinary_tensors_that_training_can_use(tiny_generator, word_tokenizer):
    # sampling runs in inference mode; what it returns must still go through autograd
    from textgan.sampling import PrefixCompleter

    _, eos, pad = special_ids(word_tokenizer)
    prompt = _prompt(word_tokenizer, 8)
    rollout = sample(tiny_generator, prompt, 6, eos_id=eos, pad_id=pad)
    completer = PrefixCompleter(tiny_generator, prompt, rollout.tokens, eos_id=eos, pad_id=pad)
    completed = completer(rollout.tokens[:, :2], torch.arange(8))
    for t in (*rollout, completed):
        assert not t.is_inference()
    logp = token_logprobs(tiny_generator, torch.cat([prompt, completed], 1))
    (logp * rollout.logprobs.exp().mean()).sum().backward()
    assert tiny_generator.lm_head.weight.grad is not None
    tiny_generator.zero_grad(set_to_none=True)


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


def test_sampling_under_bf16_autocast_decodes_with_bf16_projections(tiny_generator, word_tokenizer, decoder_dtypes,
                                                                   monkeypatch):
    """BF16_SAMPLING: the decoder of sample() and of the rollout completer folds its large projections
    into bf16 under bfloat16 autocast, and only there and only when opted in; its logits are then fp32
    numbers within bf16's rounding of the fp32 decoder's, and not the same numbers."""
    from textgan import sampling
    from textgan.models import fast_decode
    from textgan.sampling import PrefixCompleter

    made = decoder_dtypes
    _, eos, pad = special_ids(word_tokenizer)
    prompt = _prompt(word_tokenizer, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sample(tiny_generator, prompt, 6, eos_id=eos, pad_id=pad)  # off by default: fp32
    assert made == [None]
    made.clear()
    monkeypatch.setattr(sampling, "BF16_SAMPLING", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rollout = sample(tiny_generator, prompt, 6, eos_id=eos, pad_id=pad)
        PrefixCompleter(tiny_generator, prompt, rollout.tokens, eos_id=eos, pad_id=pad)(rollout.tokens[:, :2],
                                                                                       torch.arange(8))
    with torch.autocast("cpu", dtype=torch.float16):
        sample(tiny_generator, prompt, 6, eos_id=eos, pad_id=pad)  # fp16 autocast samples in fp32
    sample(tiny_generator, prompt, 6, eos_id=eos, pad_id=pad)
    assert made == [torch.bfloat16, torch.bfloat16, None, None]
    for other in (torch.float16, torch.bfloat16):  # a model in another dtype keeps its own everywhere
        assert fast_decode.LlamaDecoder(copy.deepcopy(tiny_generator).to(other), 2, 4, matmul_dtype=torch.bfloat16).low is None
    assert rollout.logprobs.dtype == torch.float32 and (rollout.logprobs[rollout.mask] < 0).all()

    ids = torch.randint(3, len(word_tokenizer), (4, 7))
    fp32, mixed = fast_decode.LlamaDecoder(tiny_generator, 4, 7), fast_decode.LlamaDecoder(
        tiny_generator, 4, 7, matmul_dtype=torch.bfloat16)
    with torch.inference_mode():
        pairs = [(fp32.prefill(ids[:, :3]), mixed.prefill(ids[:, :3]))]
        pairs += [(fp32.step(ids[:, t]), mixed.step(ids[:, t])) for t in range(3, 7)]
    for exact, low in pairs:
        assert low.dtype == torch.float32
        assert_close(low, exact, atol=2e-2, rtol=2e-2)
        assert not torch.equal(low, exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "mixed"])
@pytest.mark.parametrize("static", [False, True], ids=["step", "step_static"])
def test_fast_decoder_logits_equal_the_hf_forward(word_tokenizer, dtype, static, cpu_matmul):
    """Grouped-query attention, a prompt of several tokens, then single steps: logits as Hugging Face
    computes them, in fp32 and (to bf16's rounding) in bf16, whose rotations the decoder does in fp32,
    and for an fp32 model whose decoder runs its large projections in bf16 (``matmul_dtype``)."""
    from textgan.models import build_generator
    from textgan.models.fast_decode import LlamaDecoder, supports

    model = build_generator(len(word_tokenizer), bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4,
                            max_positions=32).eval()
    model.config.num_key_value_heads = 2  # rebuild with GQA: 4 query heads share 2 key/value heads
    model = type(model)(model.config).eval().to(torch.float32 if dtype == "mixed" else dtype)
    assert supports(model)
    ids = torch.randint(3, len(word_tokenizer), (5, 9))
    decoder = LlamaDecoder(model, 5, 9, matmul_dtype=torch.bfloat16 if dtype == "mixed" else None)
    assert (decoder._packed is not None) == (cpu_matmul == "onednn" and dtype == torch.float32)  # oneDNN: fp32 only
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    with torch.no_grad():
        full = model(input_ids=ids).logits.float()  # (B, T, V)
        assert_close(decoder.prefill(ids[:, :4]), full[:, 3], **tolerance)
        for t in range(4, 9):
            if static:
                logits = decoder.step_static(ids[:, t], torch.tensor(decoder.position))
                decoder.position += 1
            else:
                logits = decoder.step(ids[:, t])
            assert_close(logits, full[:, t], **tolerance)


def _step_logits(decoder, ids):
    """The logits after ids (B, T), fed one position at a time (the steps read the packed matrices)."""
    with torch.no_grad():
        logits = decoder.prefill(ids[:, :1])
        for t in range(1, ids.shape[1]):
            logits = decoder.step(ids[:, t])
    return logits


def _changes():
    """Ways a user's code changes a model's weights between sampling calls, each of which the decoders after it
    must see: (name, function of the model)."""

    def optimizer_step(model):
        model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.zero_grad(set_to_none=True)

    def through_data(model):  # bypasses the version counter
        model.model.layers[1].mlp.up_proj.weight.data.mul_(1.5)

    def load_state_dict(model):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["model.layers.0.self_attn.q_proj.weight"].mul_(-0.5)
        model.load_state_dict(state)

    def new_parameter(model):
        gain = model.model.norm.weight
        model.model.norm.weight = torch.nn.Parameter(gain.detach() * 2.0)

    return [("optimizer step", optimizer_step), ("in place through .data", through_data),
            ("load_state_dict", load_state_dict), ("a new Parameter", new_parameter)]


@pytest.mark.parametrize("change", _changes(), ids=[name for name, _ in _changes()])
def test_decoders_reuse_folded_weights_only_while_the_weights_are_unchanged(tiny_generator, change, cpu_matmul):
    """On a CPU the third and later decoders on unchanged weights reuse the folded (and packed) matrices of the
    one before (fast_decode._FoldCache); after any change to the weights a decoder computes what a decoder of a
    fresh copy of the model computes, and never the kept matrices' logits."""
    from textgan.models import fast_decode
    from textgan.models.fast_decode import LlamaDecoder

    model = copy.deepcopy(tiny_generator)
    ids = torch.randint(3, model.config.vocab_size, (4, 3))  # attention reads q and k
    first, second, third = (LlamaDecoder(model, 4, 6) for _ in range(3))
    assert first.weights is not second.weights  # the second decoder only learns the weights are unchanged
    assert third.weights is second.weights and third._packed is second._packed
    before = _step_logits(third, ids)
    assert torch.equal(before, _step_logits(LlamaDecoder(copy.deepcopy(model), 4, 6), ids))

    change[1](model)
    for _ in range(3):  # the first decoder after the change, and those that then reuse its matrices
        decoder = LlamaDecoder(model, 4, 6)
        after = _step_logits(decoder, ids)
        assert torch.equal(after, _step_logits(LlamaDecoder(copy.deepcopy(model), 4, 6), ids))
        assert not torch.equal(after, before)
    kept = fast_decode._FOLDS[model].folded
    assert kept is not None and decoder.weights is kept[0]
    assert LlamaDecoder(model, 5, 6).weights is not kept[0]  # packed for another row count
    fast_decode.forget(model)
    assert model not in fast_decode._FOLDS


def test_sampling_again_from_unchanged_weights_draws_what_a_fresh_model_draws(tiny_generator, word_tokenizer,
                                                                              cpu_matmul):
    """sample() calls on unchanged weights (the third on reuse the kept matrices) draw, seed for seed, exactly what
    the same calls on a fresh copy of the model draw."""
    from textgan.models import fast_decode

    _, eos, pad = special_ids(word_tokenizer)
    model = copy.deepcopy(tiny_generator)

    def draws(generator):
        torch.manual_seed(3)
        return sample(generator, _prompt(word_tokenizer, 8), 10, eos_id=eos, pad_id=pad).tokens

    reused = [draws(model) for _ in range(4)]
    assert fast_decode._FOLDS[model].folded is not None
    for tokens in reused:
        assert torch.equal(tokens, draws(copy.deepcopy(tiny_generator)))


def test_kept_folded_weights_go_with_their_model(tiny_generator):
    """The kept matrices hold no reference to their model: it is freed as usual, and its entry with it."""
    import gc
    import weakref

    from textgan.models import fast_decode
    from textgan.models.fast_decode import LlamaDecoder

    model = copy.deepcopy(tiny_generator)
    for _ in range(3):
        LlamaDecoder(model, 2, 4)
    assert fast_decode._FOLDS[model].folded is not None
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_training_keeps_no_folded_weights(tiny_generator, word_tokenizer):
    """A decoder per sampling call with a weight update between calls (training) keeps no copy of the matrices."""
    from textgan.models import fast_decode

    model = copy.deepcopy(tiny_generator)
    _, eos, pad = special_ids(word_tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        rollout = sample(model, _prompt(word_tokenizer, 4), 5, eos_id=eos, pad_id=pad)
        optimizer.zero_grad()
        token_logprobs(model, torch.cat([_prompt(word_tokenizer, 4), rollout.tokens], 1)).sum().backward()
        optimizer.step()
        assert fast_decode._FOLDS[model].folded is None


@pytest.mark.parametrize("scale", [1e-4, 0.02, 1.0, 1e3])
def test_decoding_step_rmsnorm_equals_torchs(tiny_generator, scale):
    """The step's four-call RMSNorm (into the workspace's buffer) against torch's rms_norm, at the scales
    of fresh embeddings, trained activations and outliers, with an all-zero row (where eps alone counts)."""
    import torch.nn.functional as F

    from textgan.models.fast_decode import LlamaDecoder

    decoder = LlamaDecoder(tiny_generator, 6, 8)
    work = decoder._workspace(6)
    h = torch.randn(6, tiny_generator.config.hidden_size) * scale
    h[2] = 0.0
    for eps in sorted(decoder._eps_tensors):
        expected = F.rms_norm(h, h.shape[-1:], None, eps)
        got = work.normalize(h, eps)
        assert got.data_ptr() == work.normed.data_ptr()  # written into the buffer, not allocated
        assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_same_seed_same_samples_on_both_paths(tiny_generator, word_tokenizer, cpu_matmul):
    _, eos, pad = special_ids(word_tokenizer)
    runs = []
    for fast in (True, False):
        torch.manual_seed(5)
        runs.append(sample(tiny_generator, _prompt(word_tokenizer, 8), 10, eos_id=eos, pad_id=pad, fast=fast))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_static_step_equals_step(tiny_generator, word_tokenizer, padded, cpu_matmul):
    """The fixed-shape step a CUDA graph replays: the logits of the plain step, left padding included."""
    from textgan.models.fast_decode import LlamaDecoder

    ids = torch.cat([_prompt(word_tokenizer, 4), torch.randint(5, len(word_tokenizer), (4, 10))], 1)
    mask = torch.ones(4, 5, dtype=torch.bool)
    if padded:
        mask[1, :2] = mask[3, :1] = False
    plain, static = LlamaDecoder(tiny_generator, 4, 16), LlamaDecoder(tiny_generator, 4, 16)
    with torch.no_grad():
        assert_close(plain.prefill(ids[:, :5], mask), static.prefill(ids[:, :5], mask))
        for t in range(5, ids.shape[1]):
            position = torch.tensor(static.position)
            static.position += 1
            assert_close(static.step_static(ids[:, t], position), plain.step(ids[:, t]), atol=1e-5, rtol=1e-5)
    assert static.graphed_step() == static.step  # no graph off CUDA


def test_static_step_with_a_position_per_row_equals_each_rows_own_step(tiny_generator, word_tokenizer, cpu_matmul):
    """Rows forked whole from one cache, each stepping from its own position: the logits of a
    decoder forked at that position alone, step after step (rows that write past their prefix
    overwrite the keys the base held there, and mask the rest)."""
    from textgan.models.fast_decode import LlamaDecoder

    ids = torch.cat([_prompt(word_tokenizer, 3), torch.randint(5, len(word_tokenizer), (3, 11))], 1)
    base = LlamaDecoder(tiny_generator, 3, ids.shape[1])
    new = torch.randint(5, len(word_tokenizer), (4, 3))  # tokens fed after each row's prefix
    rows, starts = torch.tensor([0, 2, 2, 1]), torch.tensor([1, 3, 7, 5])
    with torch.no_grad():
        base.prefill(ids)
        together = base.fork(rows, base.position)
        position = starts.clone()
        got = [together.step_static(ids[rows, starts], position)]
        for s in range(3):
            position = position + 1
            got.append(together.step_static(new[:, s], position))
        for i in range(4):
            alone = base.fork(rows[i : i + 1], int(starts[i]))
            expected = [alone.step(ids[rows[i : i + 1], starts[i]])] + [alone.step(new[i : i + 1, s]) for s in range(3)]
            for s in range(4):
                assert_close(got[s][i : i + 1], expected[s], atol=1e-5, rtol=1e-5)
    assert together.graphed_step_static() == together.step_static  # no graph off CUDA


def test_fast_decoder_declines_other_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    from textgan.models.fast_decode import supports

    assert not supports(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20)))


def test_draw_follows_the_distribution_and_never_draws_zero_mass():
    from textgan.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    tokens = draw(probs)
    counts = torch.bincount(tokens, minlength=6).double() / len(tokens)
    assert counts[[0, 2, 5]].sum() == 0
    # within 4 standard errors of the exact probabilities
    assert torch.allclose(counts, probs[0].double(), atol=4 * (0.25 / 20000) ** 0.5)
    edge = torch.tensor([[0.25, 0.75, 0.0]])
    assert draw(edge.repeat(1000, 1)).max() <= 1
    # the largest uniform below 1, on rows of any total with zero mass at the end and inside: the
    # point searched for stays below the total, on the last token with mass, in every dtype
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        rows = torch.rand(4000, 9) ** 4 * 10.0 ** torch.randint(-3, 4, (4000, 1))
        rows[:, 2] = rows[:, -3:] = 0
        rows = rows.to(dtype)
        highest = torch.ones(4000, 1, dtype=dtype).nextafter(torch.zeros(1, dtype=dtype))
        assert (rows.gather(1, draw(rows, highest)[:, None]) > 0).all(), dtype


def test_forked_cache_continues_like_a_fresh_prefill(tiny_generator, word_tokenizer):
    """fork(rows, t) then step(token t) gives the logits a prefill of the first t+1 tokens gives."""
    from textgan.models.fast_decode import LlamaDecoder

    ids = torch.cat([_prompt(word_tokenizer, 4), torch.randint(5, len(word_tokenizer), (4, 9))], 1)
    base = LlamaDecoder(tiny_generator, 4, ids.shape[1])
    base.prefill(ids)
    rows = torch.tensor([2, 2, 0, 3, 1])
    with torch.no_grad():
        for t in (1, 4, 9):
            child = base.fork(rows, t)
            fresh = LlamaDecoder(tiny_generator, len(rows), ids.shape[1])
            assert_close(child.step(ids[rows, t]), fresh.prefill(ids[rows, : t + 1]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="fork"):
        base.fork(rows, ids.shape[1] + 1)


@pytest.mark.parametrize("fast", [True, False])
def test_prefix_completer_samples_what_sample_would(tiny_generator, word_tokenizer, fast):
    """Completions from the shared cache equal sample() on the prefix as a prompt, draw for draw."""
    from textgan.sampling import PrefixCompleter

    _, eos, pad = special_ids(word_tokenizer)
    prompt = _prompt(word_tokenizer, 6)
    torch.manual_seed(0)
    fake = sample(tiny_generator, prompt, 12, eos_id=eos, pad_id=pad)
    complete = PrefixCompleter(tiny_generator, prompt, fake.tokens, eos_id=eos, pad_id=pad, fast=fast)
    assert (complete.base is not None) == fast
    rows = torch.tensor([0, 0, 3, 5, 5, 5])
    for t in (1, 3, 7):
        prefixes = fake.tokens[rows, :t]
        torch.manual_seed(t)
        ours = complete(prefixes, rows)
        torch.manual_seed(t)
        theirs = sample(tiny_generator, torch.cat([prompt[rows], prefixes], 1), fake.tokens.shape[1] - t,
                        eos_id=eos, pad_id=pad)
        assert torch.equal(ours, torch.cat([prefixes, theirs.tokens], 1))
        assert ours.shape[1] <= fake.tokens.shape[1] and torch.equal(ours[:, :t], prefixes)


def test_every_prefix_in_one_batch_completes_as_the_loop_over_lengths(tiny_generator, word_tokenizer):
    """Greedy (top_k=1), so that no draw differs: prefixes of every length completed together give
    the sentences that completing each length alone gives, padded after the end token, and the
    same SeqGAN rewards, in one call or in chunks of a few rows."""
    from textgan.rl import mc_rollout_rewards
    from textgan.sampling import PrefixCompleter

    _, _, pad = special_ids(word_tokenizer)
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_generator)  # an output layer of its own: greedy decoding does not just echo a token
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    prompt = torch.cat([_prompt(word_tokenizer, 6), torch.randint(5, len(word_tokenizer), (6, 2))], 1)
    # an untrained model seldom draws its end token: take as the end one that greedy decoding draws
    greedy = sample(model, prompt, 12, eos_id=-1, pad_id=pad, top_k=1).tokens[:, 3:].flatten()
    eos = int(greedy[(greedy >= 5) & ~torch.isin(greedy, prompt)][0])  # not special, not in a prompt
    fake = sample(model, prompt, 12, eos_id=eos, pad_id=pad, top_k=1)
    assert fake.lengths.min() < fake.tokens.shape[1]
    loop = PrefixCompleter(model, prompt, fake.tokens, eos_id=eos, pad_id=pad, top_k=1)
    assert loop.prefix_batch_rows == 0  # on a CPU the loop is the default
    rows = (fake.lengths > 1).nonzero().squeeze(1).repeat(3)  # prefixes of 1, half and all but one token
    lengths = torch.cat([torch.ones_like(fake.lengths), fake.lengths // 2, fake.lengths - 1])[fake.lengths.repeat(3) > 1]
    together = loop.every_prefix(rows, lengths)
    assert together.shape == (len(rows), fake.tokens.shape[1]) and len(rows) >= 9
    for i in range(len(rows)):
        alone = loop(fake.tokens[rows[i : i + 1], : lengths[i]], rows[i : i + 1])[0]
        assert torch.equal(together[i, : len(alone)], alone) and bool((together[i, len(alone) :] == pad).all())
        ended = (together[i] == eos).nonzero()
        if len(ended):
            assert bool((together[i, int(ended[0]) + 1 :] == pad).all())

    def score(sentences):  # depends on every token of the sentence
        return (sentences * torch.arange(1, sentences.shape[1] + 1)).sum(1).float().sin()

    expected = mc_rollout_rewards(fake.tokens, fake.mask, loop, score, 3)
    for batch_rows in (16384, 7):
        batched = PrefixCompleter(model, prompt, fake.tokens, eos_id=eos, pad_id=pad, top_k=1,
                                  prefix_batch_rows=batch_rows)
        assert_close(mc_rollout_rewards(fake.tokens, fake.mask, batched, score, 3), expected)


def test_rows_to_keep_drops_ended_rows_in_multiples():
    from textgan.sampling import ROW_MULTIPLE, _rows_to_keep

    finished = torch.zeros(64, dtype=torch.bool)
    finished[::5] = True  # 13 of 64 ended: the 51 left round up to 56, under a quarter of 64 would go
    assert _rows_to_keep(finished, None) is None
    finished[:] = True
    finished[::3] = False  # 22 left: keep 24, the 22 in order and the first 2 ended rows
    keep = _rows_to_keep(finished, None)
    assert len(keep) == 24 and len(keep) % ROW_MULTIPLE == 0 and torch.equal(keep, keep.sort().values)
    assert set(range(0, 64, 3)) < set(keep.tolist()) and keep[:2].tolist() == [0, 1]
    # indices are into the rows held: of the 24 held, the 22 live ones are still too many to drop
    assert _rows_to_keep(finished, keep) is None
    finished[keep[-10:]] = True  # 12 live of 24 held: keep 16 of them (indices into the held rows)
    again = _rows_to_keep(finished, keep)
    assert len(again) == 16 and (~finished[keep[again]]).sum() == 12


def _sample_with_and_without_drops(tiny_generator, word_tokenizer, monkeypatch, padded, decode, end_pull=300,
                                   sharpen=1):
    """``decode(model, prompt, prompt_mask, eos, pad)`` run twice, seeded alike: with ended rows dropped
    (and a spy that counts the drops), and with every row kept. Returns (drops, dropped run, whole run).
    The model's weights are scaled by ``sharpen`` (but its norms' gains), then its end-token row by ``end_pull``."""
    import copy

    from textgan import sampling

    _, eos, pad = special_ids(word_tokenizer)
    model = copy.deepcopy(tiny_generator)
    with torch.no_grad():  # a strong, state-dependent pull to the end token: rows end at many lengths
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.mul_(sharpen)
        model.lm_head.weight[eos] *= end_pull
    prompt, prompt_mask = _prompt(word_tokenizer, 64), None
    if padded:  # as a style-transfer source: BOS and 0-3 words, left-padded to 4 tokens
        start = torch.arange(64) % 4  # where each row's BOS sits
        prompt_mask = torch.arange(4)[None] >= start[:, None]
        words = torch.randint(5, len(word_tokenizer), (64, 4), generator=torch.Generator().manual_seed(0))
        prompt = torch.where(prompt_mask, words, pad)
        prompt[torch.arange(64), start] = _prompt(word_tokenizer, 1)[0, 0]
    kept = []
    original = sampling._rows_to_keep

    def spy(finished, held, **options):
        keep = original(finished, held, **options)
        kept.append(None if keep is None else len(keep))
        return keep

    runs = []
    for rows_to_keep in (spy, lambda finished, held, **options: None):
        monkeypatch.setattr(sampling, "_rows_to_keep", rows_to_keep)  # sampling's, greedy decoding's and beam search's
        torch.manual_seed(3)
        runs.append(decode(model, prompt, prompt_mask, eos, pad))
    return [n for n in kept if n is not None], *runs


@pytest.mark.parametrize("padded", [False, True], ids=["one prompt", "left-padded prompts"])
def test_dropping_ended_rows_changes_no_sample(tiny_generator, word_tokenizer, monkeypatch, padded):
    """Rows that have ended leave the decoder, and every other row's tokens and log-probs stay what
    the whole batch would give them: the same draws, the same logits (and the same padding mask,
    for prompts of different lengths)."""

    def decode(model, prompt, prompt_mask, eos, pad):
        return sample(model, prompt, 20, eos_id=eos, pad_id=pad, prompt_mask=prompt_mask)

    drops, dropped, whole = _sample_with_and_without_drops(tiny_generator, word_tokenizer, monkeypatch, padded, decode)
    assert drops and whole.lengths.min() < whole.lengths.max() - 3
    assert torch.equal(dropped.tokens, whole.tokens)
    assert_close(dropped.logprobs, whole.logprobs, atol=1e-6, rtol=1e-6)


def test_greedy_decoding_drops_ended_rows_too(tiny_generator, word_tokenizer, monkeypatch):
    """Style transfer's greedy decoding runs the same loop: rows leave as they end, and the rewrites
    are the ones the whole batch gives."""
    from textgan.transfer import greedy

    def decode(model, prompt, prompt_mask, eos, pad):
        return greedy(model, prompt, prompt_mask, 20, eos, pad)

    # a greedy row ends where the end token is the most likely; larger weights make that depend on the
    # context strongly enough that a row decoded from another row's keys would go another way
    drops, dropped, whole = _sample_with_and_without_drops(tiny_generator, word_tokenizer, monkeypatch, True, decode,
                                                           end_pull=10, sharpen=8)
    _, eos, _ = special_ids(word_tokenizer)
    ended = (whole == eos).any(1)
    ends = (whole == eos).float().argmax(1)[ended]
    assert drops and ends.min() < ends.max() - 3
    assert torch.equal(dropped, whole)


@pytest.mark.parametrize("beam", [4, 3])
def test_beam_search_drops_ended_sources(tiny_generator, word_tokenizer, monkeypatch, beam):
    """A source whose hypotheses have all ended leaves the decoder; the n-best lists and their scores are
    those of the whole batch. Beam 3 keeps sources in eights (24 rows), beam 4 in pairs."""
    from textgan.transfer import beam_search

    def decode(model, prompt, prompt_mask, eos, pad):
        return beam_search(model, prompt, prompt_mask, 20, eos, pad, beam=beam, n_best=True)

    drops, (history, ranked), (whole_history, whole_ranked) = _sample_with_and_without_drops(
        tiny_generator, word_tokenizer, monkeypatch, True, decode, end_pull=10, sharpen=8)
    _, eos, _ = special_ids(word_tokenizer)
    ends = torch.where((whole_history == eos).any(2), (whole_history == eos).float().argmax(2), 20).amax(1)
    assert drops and ends.min() < ends.max() - 3  # sources end at many lengths
    assert all(n % 8 == 0 for n in (beam * k for k in drops))
    assert torch.equal(history, whole_history)
    assert torch.equal(ranked, whole_ranked)


def test_sample_texts_continue_a_prompt(tiny_generator, word_tokenizer):
    """Every sentence starts with the prompt, and the next word is drawn from the model's distribution given
    the prompt, not the distribution at the start of a sentence."""
    from textgan.sampling import sample_texts

    with torch.no_grad():  # larger weights: a random model whose next word depends on its context
        for name, weight in tiny_generator.named_parameters():
            if "norm" not in name:
                weight.mul_(8)
    # max_length 3: the prompt, one word and the end token, or a fourth word where the model has not ended by then
    texts = sample_texts(tiny_generator, word_tokenizer, 4000, prompt="a man", max_length=3, seed=3, batch_size=1000)
    assert all(text.split()[:2] == ["a", "man"] and len(text.split()) <= 4 for text in texts)
    again = [sample_texts(tiny_generator, word_tokenizer, 50, prompt="a man", seed=s) for s in (5, 5, 6)]
    assert again[0] == again[1] != again[2]  # seeded
    bos, eos, _ = special_ids(word_tokenizer)
    given = [bos, *word_tokenizer.convert_tokens_to_ids(["a", "man"])]
    with torch.no_grad():
        p_prompt, p_start = (torch.log_softmax(tiny_generator(torch.tensor([ids])).logits[0, -1], -1)
                             for ids in (given, [bos]))
    third = torch.tensor([word_tokenizer.convert_tokens_to_ids(text.split()[2]) if len(text.split()) > 2 else eos
                          for text in texts])
    assert_drawn_from(p_prompt, p_start, third)  # and not as if the prompt were ignored


def test_prompts_the_model_cannot_continue_are_refused(tiny_generator, word_tokenizer):
    from textgan.sampling import PromptError, sample_texts

    with pytest.raises(PromptError, match="has no 'zorbl'; write the prompt"):
        sample_texts(tiny_generator, word_tokenizer, 2, prompt="a zorbl man")
    with pytest.raises(PromptError, match="no 'A', 'Man' \\(it knows them in lower case\\)"):
        sample_texts(tiny_generator, word_tokenizer, 2, prompt="A Man")
    with pytest.raises(PromptError, match="the prompt is 2 tokens, and sentences are at most 2"):
        sample_texts(tiny_generator, word_tokenizer, 2, prompt="a man", max_length=2)
    assert len(sample_texts(tiny_generator, word_tokenizer, 2, prompt="  ")) == 2  # blank: unconditional


@pytest.mark.parametrize("settings, message", [
    ({"temperature": float("nan")}, "temperature must be a finite positive number"),
    ({"temperature": float("inf")}, "temperature must be a finite positive number"),
    ({"temperature": 0.0}, "temperature must be a finite positive number"),
    ({"top_p": 0.0}, "top_p must be in \\(0, 1\\]"),
    ({"top_p": 1.5}, "top_p must be in \\(0, 1\\]"),
    ({"top_k": -1}, "top_k must be a whole number, zero or more"),
    ({"top_k": 2.5}, "top_k must be a whole number, zero or more"),
])
def test_sampling_settings_out_of_range_are_refused_by_name(tiny_generator, word_tokenizer, settings, message):
    """Out of range, sampling used to fail deep inside (a nan temperature or top_p=0 leaves no probability:
    'index 11 is out of bounds'; top_k=-1: 'selected index k out of range') or quietly mean another setting
    (top_p=1.5 as 1); each entry point now names the setting."""
    from textgan.sampling import PrefixCompleter, sample_texts

    prompt = _prompt(word_tokenizer, 2)
    _, eos, pad = special_ids(word_tokenizer)
    with pytest.raises(ValueError, match=message):
        sample(tiny_generator, prompt, 5, eos_id=eos, pad_id=pad, **settings)
    with pytest.raises(ValueError, match=message):
        sample_texts(tiny_generator, word_tokenizer, 2, **settings)
    with pytest.raises(ValueError, match=message):
        PrefixCompleter(tiny_generator, prompt, prompt.new_full((2, 3), pad), eos_id=eos, pad_id=pad, **settings)
    with pytest.raises(ValueError, match=message):
        filter_logits(torch.zeros(2, 4), **settings)


@pytest.mark.parametrize("counts", [{"n": -1}, {"batch_size": 0}, {"max_length": 0}])
def test_sample_texts_refuses_counts_out_of_range(tiny_generator, word_tokenizer, counts):
    """batch_size=0 was a ZeroDivisionError, n=-1 an empty list, max_length=0 the model's whole length."""
    from textgan.sampling import sample_texts

    with pytest.raises(ValueError, match="sample_texts needs n >= 0, batch_size >= 1 and max_length >= 1"):
        sample_texts(tiny_generator, word_tokenizer, **{"n": 2, **counts})
    assert sample_texts(tiny_generator, word_tokenizer, 0) == []


def test_build_generator_refuses_special_ids_outside_its_vocabulary():
    """transformers only warned, and the first forward pass failed with an index error (or, for vocab_size=0,
    building did)."""
    from textgan.models import build_generator

    with pytest.raises(ValueError, match="bos_id=10 outside the vocabulary of 5 tokens \\(ids 0..4\\)"):
        build_generator(5, bos_id=10, eos_id=2, pad_id=0)
    with pytest.raises(ValueError, match="bos_id=1, eos_id=2, pad_id=0 outside the vocabulary of 0 tokens"):
        build_generator(0, bos_id=1, eos_id=2, pad_id=0)


@pytest.mark.parametrize("sizes, message", [
    ({"d_model": 0}, "needs positive sizes .*got d_model=0"),  # was "0.0 cannot be raised to a negative power"
    ({"n_layers": 0, "n_heads": 0}, "got n_layers=0, n_heads=0"),
    ({"max_positions": 0}, "got max_positions=0"),  # was a model that cannot hold a token
    ({"d_ff": -1}, "got d_ff=-1"),
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),  # was accepted
])
def test_build_generator_refuses_sizes_it_cannot_build(sizes, message):
    from textgan.models import build_generator

    with pytest.raises(ValueError, match=message):
        build_generator(10, bos_id=0, eos_id=1, pad_id=2, **sizes)


def test_sampling_and_scoring_leave_a_training_model_in_training_mode(word_tokenizer, sentences):
    """sample_texts and sentences_nll switch dropout off while they run and then give the model back in the mode
    it was in: they used to leave it in eval mode, so a training loop of one's own that sampled between steps
    trained on without its dropout."""
    from textgan.evaluation import sentences_nll
    from textgan.models import build_generator
    from textgan.sampling import sample_texts
    from textgan.tokenization import special_ids

    bos, eos, pad = special_ids(word_tokenizer)
    torch.manual_seed(0)
    model = build_generator(len(word_tokenizer), bos_id=bos, eos_id=eos, pad_id=pad, d_model=32, n_layers=2,
                            n_heads=2, max_positions=24, dropout=0.5)
    assert model.training
    texts, nll = sample_texts(model, word_tokenizer, 8, seed=3), sentences_nll(model, word_tokenizer, sentences[:20])
    assert model.training
    model.eval()  # without dropout, as they ran
    assert sample_texts(model, word_tokenizer, 8, seed=3) == texts
    assert sentences_nll(model, word_tokenizer, sentences[:20]) == nll
    assert not model.training


def test_sample_refuses_a_prompt_it_cannot_continue(tiny_generator, word_tokenizer):
    """A 1-D or float prompt, a mask of another shape and ids outside the vocabulary used to fail deep in the
    decoder (IndexError, RuntimeError); passing the model's positions decodes ones it never trained on, and warns."""
    from textgan.tokenization import special_ids

    bos, eos, pad = special_ids(word_tokenizer)
    prompt = torch.full((4, 1), bos)
    ends = {"eos_id": eos, "pad_id": pad}
    for bad, kwargs, message in ((prompt[:, 0], {}, r"prompt must be a \(B, P\) tensor of token ids"),
                                 (prompt.float(), {}, "prompt must be a .* tensor of token ids"),
                                 (prompt, {"prompt_mask": torch.ones(4, 2, dtype=torch.bool)}, "prompt_mask \\(4, 2\\)"),
                                 (prompt + 10**6, {}, "outside the model's vocabulary of 333 tokens"),
                                 (prompt, {"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            sample(tiny_generator, bad, **{"max_new_tokens": 5, **ends, **kwargs})
    with pytest.warns(UserWarning, match="pass the model's 24 positions, which it never trained beyond; ask for at "
                                         "most 23 new tokens"):
        assert sample(tiny_generator, prompt, 30, **ends).tokens.shape[0] == 4


def test_export_generator_refuses_a_file_or_no_folder(tiny_generator, word_tokenizer, tmp_path, monkeypatch):
    """Given a file, transformers logged an error, wrote nothing, and the export returned the path as if done;
    given "", it filled the current folder with the model's files."""
    from textgan.models.generator import export_generator, load_generator

    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="afile is a file; give a folder to save the model into"):
        export_generator(tiny_generator, word_tokenizer, tmp_path / "afile")
    with pytest.raises(ValueError, match="no folder was named"):
        export_generator(tiny_generator, word_tokenizer, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    load_generator(str(export_generator(tiny_generator, word_tokenizer, tmp_path / "model")))
