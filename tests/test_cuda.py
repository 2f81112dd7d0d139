"""The GPU path: the decoder, sampling and a recipe on CUDA, and a GPU run continued on a CPU.

Skipped where no GPU is visible (CI and laptops). Elsewhere in the suite, the recipes run with
``device=auto``, so on a GPU machine every recipe test also trains on the GPU.
"""

import json

import pytest
import torch
from conftest import TINY_RUN
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from textgan.models import build_generator
from textgan.models.fast_decode import LlamaDecoder
from textgan.recipes import scratchgan
from textgan.sampling import sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible: the CUDA path is checked on GPU machines")

TINY = {**TINY_RUN, "steps": 4, "pretrain_steps": 2, "disc_dim": 16}


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Plain fp32 matmuls (no TF32), so that GPU and CPU logits agree to fp32 rounding."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def test_decoder_on_gpu_matches_the_hf_forward_and_the_cpu():
    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4, max_positions=32).eval()
    ids = torch.randint(3, 60, (5, 9))
    with torch.no_grad():
        cpu = model(input_ids=ids).logits
        model.cuda()
        full = model(input_ids=ids.cuda()).logits
        decoder = LlamaDecoder(model, 5, 9)
        assert_close(decoder.prefill(ids[:, :4].cuda()), full[:, 3], atol=1e-5, rtol=1e-5)
        for t in range(4, 9):
            assert_close(decoder.step(ids[:, t].cuda()), full[:, t], atol=1e-5, rtol=1e-5)
    assert_close(full.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_training_forward_on_gpu_matches_the_hf_forward():
    """textgan's teacher-forced forward (its complex rotation and hand-written backward passes) on CUDA:
    the Hugging Face forward's logits and gradients on the same GPU."""
    from textgan.models import fast_forward

    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4).cuda()
    ids, weights = torch.randint(3, 60, (5, 9), device="cuda"), torch.randn(5, 9, 60, device="cuda")
    assert fast_forward.applies(model, "cuda")
    results = []
    for forward in (fast_forward.forward, lambda model, ids: model(input_ids=ids).logits):
        model.zero_grad()
        logits = forward(model, ids)
        (logits * weights).sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (logits, grads), (expected_logits, expected_grads) = results
    assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        assert_close(grad, expected, atol=1e-4, rtol=1e-4)


def test_training_forward_on_gpu_with_left_padding_matches_the_hf_forward():
    """Style transfer's left-padded prompts: the key mask on CUDA, hidden states at the real positions
    and every gradient finite and equal to the Hugging Face body's with an attention mask."""
    from textgan.models import fast_forward

    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4).cuda()
    ids = torch.randint(3, 60, (4, 9), device="cuda")
    key_mask = torch.arange(9, device="cuda")[None, :] >= torch.tensor([0, 3, 5, 8], device="cuda")[:, None]
    weights = torch.randn(4, 9, 48, device="cuda") * key_mask[..., None]
    results = []
    for hidden_of in (lambda: fast_forward.causal_lm_hidden(model, ids, key_mask),
                      lambda: model.model(input_ids=ids, attention_mask=key_mask.long()).last_hidden_state):
        model.zero_grad()
        hidden = hidden_of()
        (hidden * weights).sum().backward()
        results.append((hidden.detach(), [p.grad.clone() for p in model.parameters()]))
    (hidden, grads), (expected, expected_grads) = results
    assert torch.isfinite(hidden).all()
    assert_close(hidden[key_mask], expected[key_mask], atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        assert torch.isfinite(grad).all()
        assert_close(grad, expected, atol=1e-4, rtol=1e-4)


def test_sampling_on_gpu_stays_on_the_gpu_and_ends_rows():
    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=32, n_layers=1, n_heads=2, max_positions=32)
    model = model.eval().cuda()
    prompt = torch.ones(64, 1, dtype=torch.long, device="cuda")
    out = sample(model, prompt, 20, eos_id=2, pad_id=0, top_k=10)
    assert out.tokens.device.type == "cuda" and out.tokens.shape == (64, 20)
    assert torch.equal(out.lengths, out.mask.sum(1))
    assert bool((out.tokens[~out.mask] == 0).all()) and bool((out.logprobs[~out.mask] == 0).all())
    assert bool((out.logprobs[out.mask] <= 0).all())


def test_graphed_decoding_matches_eager_decoding():
    """A CUDA graph replays the decoder step: the same logits and, from one seed, the same samples."""
    from textgan.models import fast_decode

    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4, max_positions=32)
    model = model.eval().cuda()
    ids = torch.randint(3, 60, (6, 12), device="cuda")
    mask = torch.ones(6, 4, dtype=torch.bool, device="cuda")
    mask[2, :2] = False  # a left-padded prompt
    with torch.no_grad():
        eager, graphed = LlamaDecoder(model, 6, 12), LlamaDecoder(model, 6, 12)
        assert_close(eager.prefill(ids[:, :4], mask), graphed.prefill(ids[:, :4], mask))
        step = graphed.graphed_step()
        assert step != graphed.step
        for t in range(4, 12):
            assert_close(step(ids[:, t]), eager.step(ids[:, t]), atol=1e-5, rtol=1e-5)
        assert graphed.position == eager.position == 12
    runs = []
    for graphs in (True, False):
        fast_decode.CUDA_GRAPHS = graphs
        torch.manual_seed(3)
        runs.append(sample(model, torch.ones(64, 1, dtype=torch.long, device="cuda"), 25, eos_id=2, pad_id=0))
    fast_decode.CUDA_GRAPHS = True
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=1e-5)


def test_mixed_decoder_on_gpu_graphed_and_eager(monkeypatch):
    """The opt-in bf16 sampler on CUDA: a decoder with bf16 projections (what sampling makes under bf16
    autocast with BF16_SAMPLING set) replays its graph to the eager step's logits, within bf16's
    rounding of the fp32 decoder's, and sample() so set draws valid rollouts."""
    from textgan import sampling

    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4, max_positions=32)
    model = model.eval().cuda()
    ids = torch.randint(3, 60, (6, 12), device="cuda")
    with torch.no_grad():
        exact = LlamaDecoder(model, 6, 12)
        eager, graphed = (LlamaDecoder(model, 6, 12, matmul_dtype=torch.bfloat16) for _ in range(2))
        assert_close(eager.prefill(ids[:, :4]), exact.prefill(ids[:, :4]), atol=2e-2, rtol=2e-2)
        graphed.prefill(ids[:, :4])
        step = graphed.graphed_step()
        for t in range(4, 12):
            low = eager.step(ids[:, t])
            assert_close(step(ids[:, t]), low, atol=1e-5, rtol=1e-5)
            assert_close(low, exact.step(ids[:, t]), atol=2e-2, rtol=2e-2)
    monkeypatch.setattr(sampling, "BF16_SAMPLING", True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = sample(model, torch.ones(16, 1, dtype=torch.long, device="cuda"), 10, eos_id=2, pad_id=0)
    assert out.logprobs.dtype == torch.float32 and bool((out.logprobs[out.mask] <= 0).all())


def test_graphed_sampling_keeps_the_allocator_cache_and_shares_one_graph_pool():
    """Each sampling call captures a graph: it must not empty the caching allocator (the training step
    after it would allocate from the driver again), nor leave a memory pool behind per call, and graphs
    that share the pool must still sample tokens whose log-probabilities are the model's own."""
    torch.manual_seed(0)
    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4, max_positions=32)
    model = model.eval().cuda()
    prompt = torch.ones(16, 1, dtype=torch.long, device="cuda")
    for _ in range(3):  # the shared pool's and the capture stream's first segments
        sample(model, prompt, 12, eos_id=2, pad_id=0)
    cached = torch.empty(64 * 2**20, device="cuda")  # 256 MiB that the allocator keeps once freed
    del cached
    reserved = torch.cuda.memory_reserved()
    outs = [sample(model, prompt, 12, eos_id=2, pad_id=0) for _ in range(6)]
    # nothing given back, and no more than a 2 MiB segment or two taken (a pool per call: 2 MiB or more each)
    assert reserved <= torch.cuda.memory_reserved() <= reserved + 4 * 2**20
    for out in outs:
        ids = torch.cat([prompt, out.tokens], 1)
        with torch.no_grad():
            logp = model(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
        expected = logp.gather(2, out.tokens[:, :, None]).squeeze(2)
        assert_close(out.logprobs[out.mask], expected[out.mask], atol=1e-4, rtol=1e-4)


def test_rollouts_of_every_prefix_length_in_one_graphed_batch_match_the_loop():
    """SeqGAN's rollouts on a GPU: every prefix length in one batch, each row at its own position, through
    a CUDA graph. Greedy (top_k=1), so no draw differs: the rewards of the loop over lengths, run eagerly."""
    from textgan.rl import mc_rollout_rewards
    from textgan.sampling import PrefixCompleter

    torch.manual_seed(0)
    model = build_generator(60, bos_id=1, eos_id=2, pad_id=0, d_model=48, n_layers=2, n_heads=4, max_positions=32)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))  # greedy does not echo
    model = model.eval().cuda()
    prompt = torch.ones(8, 1, dtype=torch.long, device="cuda")
    fake = sample(model, prompt, 14, eos_id=7, pad_id=0)
    ids = torch.cat([prompt, fake.tokens], 1)
    base = LlamaDecoder(model, 8, ids.shape[1])
    with torch.no_grad():
        base.prefill(ids)
        rows, starts = torch.tensor([0, 3, 3, 5], device="cuda"), torch.tensor([1, 2, 9, 6], device="cuda")
        eager, graphed = base.fork(rows, base.position), base.fork(rows, base.position)
        step = graphed.graphed_step_static()
        assert step != graphed.step_static
        for s in range(4):
            token = ids[rows, (starts + s).clamp(max=ids.shape[1] - 1)]
            assert_close(step(token, starts + s), eager.step_static(token, starts + s), atol=1e-5, rtol=1e-5)

    def score(sentences):
        return (sentences * torch.arange(1, sentences.shape[1] + 1, device="cuda")).sum(1).float().sin()

    batched = PrefixCompleter(model, prompt, fake.tokens, eos_id=7, pad_id=0, top_k=1)
    assert batched.prefix_batch_rows > 0  # the default on a GPU
    loop = PrefixCompleter(model, prompt, fake.tokens, eos_id=7, pad_id=0, top_k=1, prefix_batch_rows=0)
    assert_close(mc_rollout_rewards(fake.tokens, fake.mask, batched, score, 4),
                 mc_rollout_rewards(fake.tokens, fake.mask, loop, score, 4))


def test_gpu_run_resumed_equals_uninterrupted(tmp_path):
    """Sampling draws from the GPU's generator, whose state the checkpoint keeps: a run stopped
    after a checkpoint and resumed on the GPU ends where an unbroken one does."""
    full = scratchgan.ScratchGANConfig(out_dir=str(tmp_path / "full"), device="cuda", **TINY)
    scratchgan.main(full)
    part = {**TINY, "steps": TINY["steps"] - 2}
    scratchgan.main(scratchgan.ScratchGANConfig(out_dir=str(tmp_path / "part"), device="cuda", **part))
    scratchgan.main(scratchgan.ScratchGANConfig(out_dir=str(tmp_path / "part"), device="cuda", resume=True, **TINY))
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "generator").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "part" / "generator").state_dict()
    for key in a:
        assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_gpu_run_resumes_on_a_cpu(tmp_path):
    """Train on the GPU, stop, and continue the same run on a CPU: checkpoints hold no device."""
    config = scratchgan.ScratchGANConfig(out_dir=str(tmp_path / "run"), device="cuda", **{**TINY, "steps": 2})
    scratchgan.main(config)
    resumed = scratchgan.ScratchGANConfig(out_dir=str(tmp_path / "run"), device="cpu", resume=True, **TINY)
    scratchgan.main(resumed)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "gen/pg_loss" in r]
    assert steps == sorted(steps) and steps[-1] == TINY["steps"] + TINY["pretrain_steps"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "generator")
    assert next(model.parameters()).device.type == "cpu"
