"""fp32 matrix products on this CPU: torch's default BLAS against oneDNN, and what the choice does to
textgan's training step and sampler (``textgan.models.onednn``).

    python benchmarks/cpu_matmul.py          # full run: cpu_matmul_<cpu>.{json,md}
    python benchmarks/cpu_matmul.py --quick  # a smoke run, nothing recorded
    python benchmarks/cpu_matmul.py --name cpu_matmul_amd_epyc_zen4   # beside another CPU of the same name

In one run:
1. a 2048 x 2048 fp32 product through ``torch.mm`` and through oneDNN (``torch.ops.mkldnn._linear_pointwise``),
   best of 10: the two ceilings;
2. the generator's products at d128 and d256: the decoder's (64 rows; oneDNN with the weight as it is and
   packed once, as the decoder does) and a training step's (64 x 20 rows: forward, input gradient, weight
   gradient), each library's GFLOP/s;
3. an MLE step (textgan's forward and backward, AdamW) and ``sample()`` (batch 64, 20 tokens) at d128 and
   d256 with textgan's products through each library (``onednn.use``), interleaved, best of several runs.
``textgan.models.onednn.active()`` (what textgan uses on this machine by itself) is recorded beside them.
"""

from __future__ import annotations

import argparse
import re

import torch
from _record import cpu_model, record
from sampler_speed import best_of_each

from textgan.models import build_generator, fast_forward, onednn
from textgan.sampling import sample

VOCAB = 428


def gflops(flop: float, seconds: float) -> float:
    return flop / seconds / 1e9


def products(d: int, repeats: int) -> list[dict]:
    """GFLOP/s of each of the generator's products at width d, through torch.mm and through oneDNN."""
    rows = []
    shapes = {"q/k/v": (d, 3 * d), "attention output": (d, d), "MLP gate+up": (d, 8 * d), "MLP down": (4 * d, d),
              "output layer": (d, VOCAB)}
    for name, (k, n) in shapes.items():
        times = product_times(k, n, repeats)
        small, large = 2 * 64 * k * n, 2 * 64 * 20 * k * n
        flops = [small] * 3 + [large] * 6
        rows.append({"d_model": d, "product": name, "k": k, "n": n,
                     **dict(zip(["decode_torch", "decode_onednn", "decode_onednn_packed", "forward_torch",
                                 "forward_onednn", "input_grad_torch", "input_grad_onednn", "weight_grad_torch",
                                 "weight_grad_onednn"], [gflops(f, t) for f, t in zip(flops, times)]))})
    return rows


def product_times(k: int, n: int, repeats: int) -> list[float]:
    """Seconds of a (K, N) weight's products, torch.mm then oneDNN: decoding (64 rows; oneDNN also packed), and a
    training step's forward, input gradient and weight gradient (1,280 rows)."""
    product = onednn.product
    weight = torch.randn(n, k)
    x, big, grad = torch.randn(64, k), torch.randn(64 * 20, k), torch.randn(64 * 20, n)
    packed, weight_t = onednn.packed(weight, 64), weight.t().contiguous()
    return best_of_each([lambda: torch.mm(x, weight.t()), lambda: product(x, weight), lambda: product(x, packed),
                         lambda: torch.mm(big, weight.t()), lambda: product(big, weight),
                         lambda: torch.mm(grad, weight), lambda: product(grad, weight_t),
                         lambda: torch.mm(grad.t(), big), lambda: onednn.weight_gradient(grad, big)], repeats)


def steps(d: int, repeats: int, runs: int) -> dict:
    """Milliseconds of an MLE step and of a sampling call, each library, interleaved."""
    torch.manual_seed(0)
    model = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, d_model=d, n_layers=2, n_heads=4, max_positions=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, VOCAB, (64, 21))
    prompt = torch.ones(64, 1, dtype=torch.long)

    def mle_step():
        logits = fast_forward.causal_lm_logits(model, ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sampling():
        sample(model.eval(), prompt, 20, eos_id=VOCAB, pad_id=0)  # VOCAB: an end token it cannot draw
        model.train()

    def under(enabled, fn):
        def run():
            with onednn.use(enabled):
                for _ in range(runs):
                    fn()
        return run

    times = best_of_each([under(False, mle_step), under(True, mle_step), under(False, sampling), under(True, sampling)],
                         repeats)
    mle_torch, mle_onednn, sample_torch, sample_onednn = (t / runs * 1e3 for t in times)
    return {"d_model": d, "mle_ms_torch": mle_torch, "mle_ms_onednn": mle_onednn,
            "sample_tokens_per_s_torch": 64 * 20 / sample_torch * 1e3,
            "sample_tokens_per_s_onednn": 64 * 20 / sample_onednn * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default=None, help="results name (default: cpu_matmul_<cpu model>)")
    args = parser.parse_args()
    if onednn._operator() is None:
        raise SystemExit("error: this torch has no oneDNN linear operator; nothing to compare")
    repeats, runs = (1, 1) if args.quick else (10, 5)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ceiling = best_of_each([lambda: torch.mm(a, b), lambda: onednn.product(a, b)], 2 if args.quick else 10)
    ceilings = {"torch": gflops(2 * 2048**3, ceiling[0]), "onednn": gflops(2 * 2048**3, ceiling[1])}
    sizes = (128,) if args.quick else (128, 256)
    product_rows = [row for d in sizes for row in products(d, 3 if args.quick else 50)]
    step_rows = [steps(d, repeats, runs) for d in sizes]

    lines = ["# fp32 matrix products: torch's default BLAS against oneDNN", "",
             (f"textgan on this machine by itself: **{onednn.describe()}**; CPU vendor {onednn.cpu_vendor() or '?'}, "
             f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads."), "",
             (f"Ceiling, a 2048 x 2048 product (best of 10): torch.mm **{ceilings['torch']:.0f} GFLOP/s**, oneDNN "
             f"**{ceilings['onednn']:.0f} GFLOP/s** ({ceilings['onednn'] / ceilings['torch']:.2f}x)."), "",
             "## The generator's products (GFLOP/s, torch.mm / oneDNN)", "",
             ("| d_model | product | K x N | decoding (64 rows) | oneDNN, packed weight | training forward (1,280 rows) "
             "| input gradient | weight gradient |"),
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in product_rows:
        lines.append(f"| {r['d_model']} | {r['product']} | {r['k']} x {r['n']} | {r['decode_torch']:.0f} / "
                     f"{r['decode_onednn']:.0f} | {r['decode_onednn_packed']:.0f} | {r['forward_torch']:.0f} / "
                     f"{r['forward_onednn']:.0f} | {r['input_grad_torch']:.0f} / {r['input_grad_onednn']:.0f} "
                     f"| {r['weight_grad_torch']:.0f} / {r['weight_grad_onednn']:.0f} |")
    lines += ["", "## textgan's steps with each library (`textgan.models.onednn.use`)", "",
              ("| d_model | MLE step, torch.mm | MLE step, oneDNN | speed-up | sampler tok/s, torch.mm "
              "| sampler tok/s, oneDNN | speed-up |"), "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in step_rows:
        lines.append(f"| {r['d_model']} | {r['mle_ms_torch']:.1f} ms | {r['mle_ms_onednn']:.1f} ms "
                     f"| {r['mle_ms_torch'] / r['mle_ms_onednn']:.2f}x | {r['sample_tokens_per_s_torch']:,.0f} "
                     f"| {r['sample_tokens_per_s_onednn']:,.0f} "
                     f"| {r['sample_tokens_per_s_onednn'] / r['sample_tokens_per_s_torch']:.2f}x |")
    lines += ["", (f"MLE step: textgan's forward and backward and AdamW on 64 sentences of 21 tokens (vocabulary {VOCAB}), "
              f"2 layers; sampler: `sample()` of 20 tokens for 64 rows (the decoder's fold and packing included; "
              f"with oneDNN, products below `onednn.SMALL_PRODUCT_FLOPS` stay torch.mm's, as the decoder does). "
              f"Each the best of {repeats} rounds of {runs} runs, both libraries in every round.")]
    md = "\n".join(lines) + "\n"
    print(md)
    if not args.quick:
        slug = re.sub(r"[^a-z0-9]+", "_", " ".join((cpu_model() or "cpu").lower().split()[:3])).strip("_")
        record(args.name or f"cpu_matmul_{slug}", {"ceilings": ceilings, "products": product_rows, "steps": step_rows,
                                      "active": onednn.active()}, md)


if __name__ == "__main__":
    main()
