"""The lean teacher-forced forward: the Hugging Face forward's logits and gradients, its autograd
Functions' hand-written backward passes against numerical gradients, and when it applies."""

import pytest
import torch
from torch.testing import assert_close

from textgan.models import build_generator, causal_lm_logits
from textgan.models import fast_forward as ff


def generator(kv_heads: int = 4, **size):
    model = build_generator(50, bos_id=1, eos_id=2, pad_id=0, **{"d_model": 48, "n_heads": 4, **size})
    model.config.num_key_value_heads = kv_heads  # rebuilt with grouped-query attention where kv_heads < 4
    return type(model)(model.config)


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_logits_and_gradients_equal_the_hf_forward(kv_heads, cpu_matmul):
    torch.manual_seed(0)
    model = generator(kv_heads, n_layers=2)
    with torch.no_grad():  # away from the initial ones and identity gains, so that every term counts
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ids = torch.randint(3, 50, (5, 9))
    weights = torch.randn(5, 9, 50)  # a loss that reaches every logit

    def run(logits_of):
        model.zero_grad()
        logits = logits_of(ids)
        (logits * weights).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    assert ff.applies(model, "cpu")
    logits, grads = run(lambda ids: ff.forward(model, ids))
    expected_logits, expected_grads = run(lambda ids: model(input_ids=ids).logits)
    assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_left_padded_rows_equal_the_hf_forward_with_an_attention_mask(cpu_matmul):
    """Style transfer's prompts: rows left-padded by 0, 3, 5 and 8 of 9 positions, keys masked."""
    torch.manual_seed(0)
    model = generator(2, n_layers=2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ids = torch.randint(3, 50, (4, 9))
    key_mask = torch.arange(9)[None, :] >= torch.tensor([0, 3, 5, 8])[:, None]
    weights = torch.randn(4, 9, 48) * key_mask[..., None]  # a loss on the real positions only

    def run(hidden_of):
        model.zero_grad()
        hidden = hidden_of()
        (hidden * weights).sum().backward()
        return hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    hidden, grads = run(lambda: ff.causal_lm_hidden(model, ids, key_mask))
    expected, expected_grads = run(lambda: model.model(input_ids=ids, attention_mask=key_mask.long()).last_hidden_state)
    assert torch.isfinite(hidden).all()  # padded positions too: they attend to themselves
    assert_close(hidden[key_mask], expected[key_mask], atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert_close(grad, expected_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_chunked_head_backward_matches_numerical_gradients():
    """7 rows in blocks of 3 (the last one short), repeated targets."""
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 3, 10, 5, 0, 7])
    assert torch.autograd.gradcheck(lambda h, w: ff._HeadLogProbs.apply(h, w, targets, 3), (hidden, weight))
    expected = torch.log_softmax(hidden @ weight.t(), -1).gather(1, targets[:, None]).squeeze(1)
    assert_close(ff._HeadLogProbs.apply(hidden, weight, targets, 3), expected)


def chunked(logprobs: torch.Tensor) -> bool:
    return "HeadLogProbs" in logprobs.grad_fn.next_functions[0][0].name()


def test_token_logprobs_of_large_logits_take_the_chunked_head(monkeypatch):
    from textgan.models import token_logprobs

    monkeypatch.setattr(ff, "CHUNKED_HEAD_LOGITS", 597 * 4100)
    torch.manual_seed(0)
    V = 4100
    model = build_generator(V, bos_id=1, eos_id=2, pad_id=0, d_model=32, n_heads=2, n_layers=1)
    ids = torch.randint(3, V, (3, 200))  # 597 rows: several blocks of 511, the last one short
    weights = torch.randn(3, 199)

    def run(logprobs_of):
        model.zero_grad()
        logprobs = logprobs_of()
        (logprobs * weights).sum().backward()
        return logprobs, {name: p.grad.clone() for name, p in model.named_parameters()}

    logprobs, grads = run(lambda: token_logprobs(model, ids))
    assert chunked(logprobs)

    def hf_logprobs():
        logits = model(input_ids=ids[:, :-1]).logits
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    expected, expected_grads = run(hf_logprobs)
    assert_close(logprobs.detach(), expected.detach(), atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], atol=1e-4, rtol=1e-4, msg=name)
    assert not chunked(token_logprobs(model, ids[:, :-1]))  # fewer logits: whole


def test_rmsnorm_backward_matches_numerical_gradients():
    torch.manual_seed(0)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    x.data[2] = 0  # a zero row: eps alone sets its scale
    gain = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, g: ff._RMSNorm.apply(x, g, 1e-6), (x, gain))
    expected = torch.nn.functional.rms_norm(x, (8,), gain, 1e-6)
    assert_close(ff._RMSNorm.apply(x, gain, 1e-6), expected)


def test_gated_silu_backward_matches_numerical_gradients():
    torch.manual_seed(0)
    gate_up = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ff._GatedSiLU.apply, (gate_up,))
    gate, up = gate_up.chunk(2, -1)
    assert_close(ff._GatedSiLU.apply(gate_up), torch.nn.functional.silu(gate) * up)


def test_rotary_split_backward_matches_numerical_gradients():
    """q, k and v of 4 query and 2 key/value heads of dimension 4, q and k turned by position."""
    torch.manual_seed(0)
    B, T, H, Hkv, D = 2, 3, 4, 2, 4
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(T, 1, D // 2, dtype=torch.float64) * 6
    rotation = torch.polar(torch.ones_like(angles), angles)
    assert torch.autograd.gradcheck(lambda x: ff._Rotary.apply(x, rotation, H, Hkv), (qkv,))
    q, k, v = ff._Rotary.apply(qkv, rotation, H, Hkv)
    assert q.shape == (B, H, T, D) and k.shape == v.shape == (B, Hkv, T, D)
    # pair (x, y) at position t, dimension pair i -> (x cos - y sin, x sin + y cos)
    x, y = qkv[0, 1, 2], qkv[0, 1, 3]
    c, s = angles[1, 0, 1].cos(), angles[1, 0, 1].sin()
    assert_close(q[0, 0, 1, 2:4], torch.stack([x * c - y * s, x * s + y * c]))
    assert_close(v[1, 1, 2], qkv[1, 2, (H + Hkv) * D + D :])


def test_applies_only_to_the_forward_it_reproduces():
    model = generator()
    assert ff.applies(model, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ff.applies(model, "cpu")  # bf16 autocast keeps the Hugging Face forward
    assert not ff.applies(generator().to(torch.bfloat16), "cpu")
    compiled = generator()
    compiled.compile()  # lazy: nothing is compiled until a call
    assert not ff.applies(compiled, "cpu")
    body_compiled = generator()
    body_compiled.model.compile()  # as the style-transfer recipe compiles its model's body
    assert not ff.applies(body_compiled, "cpu")
    dropout = build_generator(50, bos_id=1, eos_id=2, pad_id=0, d_model=48, dropout=0.1)
    assert not ff.applies(dropout.train(), "cpu") and ff.applies(dropout.eval(), "cpu")


def test_causal_lm_logits_falls_back_to_the_models_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 50, (2, 5))
    assert not ff.applies(model, "cpu")
    with torch.no_grad():
        assert_close(causal_lm_logits(model, ids), model(input_ids=ids).logits)
        key_mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
        expected = model.transformer(input_ids=ids, attention_mask=key_mask.long()).last_hidden_state
        assert_close(ff.causal_lm_hidden(model, ids, key_mask), expected)


@pytest.mark.parametrize("forward", ["textgan", "hugging face"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_nll_on_equals_the_nll_of_the_whole_padded_batch(forward, temperature, monkeypatch, cpu_matmul):
    """nll_on takes rows shortest first, cuts each batch to its longest row and scores only real
    tokens: the same number as scoring every row at full width and masking afterwards."""
    from textgan.data import sequence_mask
    from textgan.training import nll_on

    torch.manual_seed(0)
    model = generator(2, n_layers=2).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    lengths = torch.tensor([7, 1, 4, 9, 2, 2, 5, 8, 3, 6, 1])  # tokens before the end token
    ids = torch.randint(3, 50, (len(lengths), 11))
    ids[:, 0] = 1
    for row, n in enumerate(lengths.tolist()):
        ids[row, n + 1] = 2  # the end token, then padding
        ids[row, n + 2 :] = 0
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits / temperature
        logprobs = torch.log_softmax(logits.double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = sequence_mask(ids[:, 1:], 2)
    assert mask.sum(1).tolist() == (lengths + 1).tolist()
    expected = float(-(logprobs * mask).sum() / mask.sum())
    if forward == "hugging face":
        monkeypatch.setattr(ff, "applies", lambda model, device_type: False)
    assert ff.applies(model, "cpu") == (forward == "textgan")
    assert nll_on(model, ids, eos_id=2, batch_size=3, temperature=temperature) == pytest.approx(expected, abs=1e-6)
