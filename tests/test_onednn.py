"""fp32 products through oneDNN (textgan.models.onednn): the same numbers as torch's, with gradients;
which CPUs get them (a bad TEXTGAN_CPU_MATMUL stopping a command: test_bad_input.py). The training forward
and the decoder are checked against the Hugging Face forward on both libraries (the ``cpu_matmul``
fixture in test_fast_forward.py and test_sampling.py)."""

import pytest
import torch
from conftest import run_module
from torch.testing import assert_close

from textgan.config import ConfigError
from textgan.models import onednn

needs_operator = pytest.mark.skipif(onednn._operator() is None, reason="this torch has no oneDNN linear operator")


@pytest.fixture()
def fresh_choice(monkeypatch):
    """active() decides once per process: forget that decision before and after the test."""
    onednn.active.cache_clear()
    yield monkeypatch
    onednn.active.cache_clear()


def test_setting_accepts_the_choices_and_names_them_for_anything_else(fresh_choice):
    fresh_choice.delenv("TEXTGAN_CPU_MATMUL", raising=False)
    assert onednn.setting() == "auto"
    for choice in ("auto", "onednn", "default", " OneDNN "):
        fresh_choice.setenv("TEXTGAN_CPU_MATMUL", choice)
        assert onednn.setting() == choice.strip().lower()
    fresh_choice.setenv("TEXTGAN_CPU_MATMUL", "mkl")
    with pytest.raises(ConfigError, match="'mkl' is not a choice: set it to auto, onednn, default"):
        onednn.setting()


@needs_operator
@pytest.mark.parametrize("vendor, capability, expected", [("AuthenticAMD", "AVX512", True),
                                                          ("AuthenticAMD", "AVX2", False),
                                                          ("GenuineIntel", "AVX512", False), ("", "AVX512", False)])
def test_auto_picks_onednn_on_amd_cpus_with_avx512(fresh_choice, vendor, capability, expected):
    fresh_choice.setenv("TEXTGAN_CPU_MATMUL", "auto")
    fresh_choice.setattr(onednn, "cpu_vendor", lambda: vendor)
    fresh_choice.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert onednn.active() is expected
    onednn.active.cache_clear()
    fresh_choice.setenv("TEXTGAN_CPU_MATMUL", "onednn")
    assert onednn.active()
    onednn.active.cache_clear()
    fresh_choice.setenv("TEXTGAN_CPU_MATMUL", "default")
    assert not onednn.active()


@needs_operator
def test_applies_to_fp32_cpu_inputs_outside_autocast(monkeypatch):
    monkeypatch.setattr(onednn, "active", lambda: True)
    assert onednn.applies(torch.ones(2, 3))
    assert not onednn.applies(torch.ones(2, 3, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.applies(torch.ones(2, 3))
    with onednn.use(False):  # use() overrides active() inside its block, and only there
        assert not onednn.applies(torch.ones(2, 3))
    assert onednn.applies(torch.ones(2, 3))
    monkeypatch.setattr(onednn, "active", lambda: False)
    assert not onednn.applies(torch.ones(2, 3))
    with onednn.use(True):
        assert onednn.applies(torch.ones(2, 3))


@needs_operator
@pytest.mark.parametrize("out_features", [20, 50], ids=["narrowing", "widening"])
@pytest.mark.parametrize("shape, residual", [((7, 33), False), ((3, 5, 33), False), ((15, 33), True)],
                         ids=["linear-2d", "linear-3d", "add_linear"])
def test_linear_and_its_gradients_equal_torchs(shape, residual, out_features):
    """Every output and gradient of x @ w.T (+ r) as torch computes them; the weight (N, K) as F.linear's.
    add_linear takes the flat rows that torch.addmm would. N < K and N > K take the two ways of the weight
    gradient (onednn.weight_gradient)."""
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(out_features, 33, requires_grad=True)
    r = torch.randn(x.shape[0], out_features, requires_grad=True)

    def run(active):
        for t in (x, weight, r):
            t.grad = None
        with onednn.use(active):
            out = onednn.add_linear(r, x, weight) if residual else onednn.linear(x, weight)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(grad)
        return out.detach(), [t.grad for t in (x, weight, r)]

    out, grads = run(True)
    expected, expected_grads = run(False)
    assert out.shape == expected.shape
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        assert (got is None) == (want is None)
        if got is not None:
            assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_operator
@pytest.mark.parametrize("rows", [1, 5, 8, 64])
def test_a_packed_weight_serves_any_row_count(rows):
    """Packed for 8 rows (the decoder's batch), used on fewer and more (rows that end are dropped)."""
    torch.manual_seed(0)
    weight, x, residual = torch.randn(30, 16), torch.randn(rows, 16), torch.randn(rows, 30)
    packed = onednn.packed(weight, 8)
    assert_close(onednn.product(x, packed), x @ weight.t(), atol=1e-5, rtol=1e-5)
    assert_close(onednn.product(x, packed, residual), residual + x @ weight.t(), atol=1e-5, rtol=1e-5)


def test_version_line_names_the_cpu_matmul_library():
    result = run_module("textgan", "--version")
    assert result.returncode == 0
    assert "CPU matmul oneDNN (" in result.stdout or "CPU matmul torch default (" in result.stdout


@needs_operator
def test_the_chunked_head_gives_torchs_numbers_through_onednn():
    """The row-chunked vocabulary head (fast_forward._HeadLogProbs, float64-gradchecked on torch's path):
    its log-probabilities and both gradients through oneDNN, in uneven blocks with repeated targets."""
    from textgan.models import fast_forward

    torch.manual_seed(0)
    hidden, weight = torch.randn(37, 24, requires_grad=True), (torch.randn(300, 24) * 0.3).requires_grad_()
    targets = torch.randint(0, 300, (37,))
    targets[5:9] = 7
    grad = torch.randn(37)

    def run(enabled):
        hidden.grad = weight.grad = None
        with onednn.use(enabled):
            out = fast_forward._HeadLogProbs.apply(hidden, weight, targets, 16)
            out.backward(grad)
        return out.detach(), hidden.grad, weight.grad

    for got, expected in zip(run(True), run(False)):
        assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_operator
def test_compile_says_when_it_gives_up_onednn_products(capsys, monkeypatch):
    """compile=true keeps the Hugging Face forward and torch's products: where oneDNN's are in use, the recipe
    says so once; elsewhere, and for models that do not take textgan's forward, it says nothing."""
    from types import SimpleNamespace

    from textgan.models import build_discriminator, build_generator
    from textgan.training import compile_forward

    generator = build_generator(20, bos_id=1, eos_id=2, pad_id=0, d_model=16, n_layers=1, n_heads=2)
    discriminator = build_discriminator("lstm", 20, 0, dim=16)
    for module in (generator, discriminator):
        monkeypatch.setattr(module, "compile", lambda: None)  # what is said, not the compilation, is tested
    for enabled, module, said in [(True, generator, True), (False, generator, False), (True, discriminator, False)]:
        with onednn.use(enabled):
            assert compile_forward(module, SimpleNamespace(compile=True)) is module
            compile_forward(module, SimpleNamespace(compile=False))
        err = capsys.readouterr().err
        assert ("note: compile=true runs torch's own fp32 matrix products" in err) is said
        assert err.count("note:") == int(said)


@needs_operator
@pytest.mark.parametrize("threshold, packed", [(30_000, [True, False, True, True]),
                                               (40_000, [False, False, True, False])])
def test_the_decoder_leaves_products_too_small_for_onednn_to_torch(monkeypatch, threshold, packed):
    """Each of the decoder's matrices goes to oneDNN only where its product at the batch's rows reaches
    SMALL_PRODUCT_FLOPS; with some on each side (every product through each library between the two
    thresholds), its logits are still the Hugging Face forward's."""
    from textgan.models import build_generator
    from textgan.models.fast_decode import LlamaDecoder

    torch.manual_seed(0)
    model = build_generator(50, bos_id=1, eos_id=2, pad_id=0, d_model=32, n_layers=2, n_heads=4, d_ff=96,
                            max_positions=16).eval()
    rows = 6  # operations per product at 6 rows: q/k/v (32 x 96) 36,864, the output projection (32 x 32) 12,288,
    # gate/up (32 x 192) 73,728, down (96 x 32) 36,864, the output layer (32 x 50) 19,200
    monkeypatch.setattr(onednn, "SMALL_PRODUCT_FLOPS", threshold)
    ids = torch.randint(3, 50, (rows, 8))
    with onednn.use(True), torch.no_grad():
        decoder = LlamaDecoder(model, rows, 8)
        assert [[p is not None for p in layer] for layer in decoder._packed] == [packed] * 2
        assert decoder._packed_head is None
        full = model(input_ids=ids).logits
        logits = [decoder.prefill(ids[:, :1])] + [decoder.step(ids[:, t]) for t in range(1, 8)]
    for t, got in enumerate(logits):
        assert_close(got, full[:, t], atol=1e-5, rtol=1e-5)
