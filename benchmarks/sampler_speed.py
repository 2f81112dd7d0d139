"""textgan's KV-cache sampler against ``transformers``' ``generate()`` on the same weights.

    python benchmarks/sampler_speed.py            # batch 64, lengths 20 and 50, default generator size
    python benchmarks/sampler_speed.py --quick    # a smoke run
    python benchmarks/sampler_speed.py --name sampler_speed_amd_epyc   # another CPU's figures beside these
    python benchmarks/sampler_speed.py --d-model 256   # the 4x generator of speed.py: sampler_speed_d256.{json,md}
    python benchmarks/sampler_speed.py --rounds 9      # more rounds (default 5), for a steadier median
    python benchmarks/sampler_speed.py --d-model 256 --precision bf16   # under bf16 autocast: sampler_speed_d256_bf16

Both produce exactly ``length`` new tokens per row (no row may end early), so tokens/s compare
like for like. A third column times the decoding steps' matrix products alone (the projections,
the two attention products and the output layer, with the decoder's own folded weights and
cache shapes, through the library the decoder uses: ``textgan.models.onednn``): no sampler that
computes these products with torch can beat it, so it bounds the speed-up over ``generate()`` that
any amount of Python trimming could buy. A fourth runs textgan's
sampler on a generator of the same depth, heads and vocabulary but width 16: the same tensor calls
(each product through the library the full-width decoder uses for it) with next to no arithmetic,
the cost of the calls themselves.

Each length is compared in several rounds, each a best of 10 interleaved runs, and the table shows
the round with the median speed-up and the range over all of them: on a shared machine one round
(a few seconds) can land anywhere in a range of 2.8-4.0x (measured), as the machine's speed changes
from second to second, and a best-of within the round does not steady it. Writes
benchmarks/results/sampler_speed.{json,md}, or those of --name.

``--precision bf16`` compares the samplers under bfloat16 autocast with ``textgan.sampling.BF16_SAMPLING``
set, where textgan's decoder takes bf16 q/k/v and MLP projections (:func:`textgan.sampling.matmul_dtype`):
textgan's sampler against ``generate()`` under the same autocast and on a bf16 copy of the weights
(``model.to(torch.bfloat16)``), with both samplers' fp32 figures beside them.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch
from _record import device_name, record, results_name

from textgan import sampling
from textgan.models import build_generator, fast_decode, onednn
from textgan.models.fast_decode import LlamaDecoder
from textgan.sampling import sample


def sync_device() -> None:
    """Wait for queued GPU work, so that host clocks time the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mean_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """Mean seconds of ``fn`` over ``repeats`` calls in a row, after ``warmup`` untimed calls: for steps
    that change state (an optimizer's), where a best-of over fresh rounds would not be the same work."""
    for _ in range(warmup):
        fn()
    sync_device()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync_device()
    return (time.perf_counter() - start) / repeats


def best_of(fn, repeats: int) -> float:
    return best_of_each([fn], repeats)[0]


def best_of_each(fns, repeats: int) -> list[float]:
    """The best time of each function over ``repeats`` rounds that run every one of them once, so that a
    shared machine's slow spells fall on all of them alike and their ratios hold."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            sync_device()
            start = time.perf_counter()
            fn()
            sync_device()
            kept.append(time.perf_counter() - start)
    return [min(kept) for kept in times]


def compare(model, narrow, batch: int, length: int, repeats: int) -> dict:
    """textgan's sampler against generate() on the same weights: tokens/s of each, best of ``repeats``.

    Both produce exactly ``length`` new tokens per row: the end token is one the model cannot emit.
    ``narrow``: the same generator at width 16, whose sampling time is that of the sampler's calls.
    """
    never = model.config.vocab_size
    device = model.device
    prompt = torch.ones(batch, 1, dtype=torch.long, device=device)

    def ours(generator=model):
        out = sample(generator, prompt, length, eos_id=never, pad_id=0)
        assert out.tokens.shape == (batch, length)

    twin = copy.deepcopy(model)  # the same weights, sampled as training does: its own state in fast_decode's cache

    def ours_after_update():
        """A call after the weights changed, as in training: the decoder folds and packs its matrices again
        instead of reusing the previous call's (``fast_decode._FoldCache``)."""
        fast_decode.forget(twin)
        ours(twin)

    def theirs():
        with torch.no_grad():
            out = model.generate(prompt, do_sample=True, max_new_tokens=length, min_new_tokens=length, max_length=None,
                                 eos_token_id=None, pad_token_id=0, top_k=0, top_p=1.0)
        assert out.shape == (batch, length + 1)

    decoder = LlamaDecoder(model, batch, length + 1)
    H, Hkv, D = decoder.n_heads, decoder.n_kv_heads, decoder.head_dim
    keys = torch.randn(batch * Hkv, length + 1, 2 * D, device=device)[..., :D]  # the cache's layout: keys, values
    x, q = torch.randn(batch, model.config.hidden_size, device=device), torch.randn(batch * Hkv, H // Hkv, D, device=device)
    hidden = torch.randn(batch, model.config.intermediate_size, device=device)

    def matmuls_only():
        """Every matrix product of ``length`` decoding steps, at the shapes and layouts the decoder uses, through
        the library it uses for each (oneDNN with packed weights where ``textgan.models.onednn`` applies and the
        product is large enough to pay, torch.mm elsewhere), the residual adds in place into a scratch row block."""
        packed, product, residual = decoder._packed, fast_decode._product, x.clone()
        for t in range(length):
            for i, (w_qkv, w_out, w_mlp, w_down) in enumerate(decoder.weights):
                p_qkv, p_out, p_mlp, p_down = (None,) * 4 if packed is None else packed[i]
                scores = torch.bmm(q, keys[:, : t + 1].transpose(1, 2))
                attended = torch.bmm(scores, keys[:, : t + 1]).view(batch, -1)
                product(x, w_qkv, p_qkv), product(attended, w_out, p_out, residual=residual)
                product(x, w_mlp, p_mlp), product(hidden, w_down, p_down, residual=residual)
            product(x, decoder._head_t, None if packed is None else decoder._packed_head)

    def matmuls_no_grad():
        with torch.no_grad():
            matmuls_only()

    # the decoder's library for each of its matrices (packed: oneDNN), in the order it packs them
    choices = None if decoder._packed is None else [p is not None for p in (*sum(decoder._packed, ()),
                                                                             decoder._packed_head)]

    def narrow_calls():
        """The narrow sampler, each of its products through the library the full-width decoder uses for the same
        matrix (at width 16 every product is below ``onednn.SMALL_PRODUCT_FLOPS``): the same calls."""
        if choices is None:
            return ours(narrow)
        chosen, pays = itertools.cycle(choices), onednn.pays
        onednn.pays = lambda rows, weight: next(chosen)
        try:
            ours(narrow)
        finally:
            onednn.pays = pays

    t_ours, t_theirs, t_floor, t_calls, t_cold = best_of_each(
        [ours, theirs, matmuls_no_grad, narrow_calls, ours_after_update], repeats)
    extra = {}
    if device.type == "cuda":  # the same sampler launching its kernels one by one
        fast_decode.CUDA_GRAPHS = False
        try:
            extra["textgan_no_graphs_tokens_per_s"] = batch * length / best_of(ours, repeats)
        finally:
            fast_decode.CUDA_GRAPHS = True
    return {**extra, "length": length, "batch": batch, "textgan_tokens_per_s": batch * length / t_ours,
            "generate_tokens_per_s": batch * length / t_theirs, "speedup": t_theirs / t_ours,
            "textgan_after_update_tokens_per_s": batch * length / t_cold, "speedup_after_update": t_theirs / t_cold,
            "matmuls_only_tokens_per_s": batch * length / t_floor, "speedup_bound": t_theirs / t_floor,
            "width16_tokens_per_s": batch * length / t_calls, "matmuls_plus_calls_speedup": t_theirs / (t_floor + t_calls)}


def compare_bf16(model, batch: int, length: int, repeats: int) -> dict:
    with sampling.bf16_sampling():  # opt in: this comparison is the bf16 sampler's
        return _compare_bf16(model, batch, length, repeats)


def _compare_bf16(model, batch: int, length: int, repeats: int) -> dict:
    """Under bfloat16 autocast: textgan's sampler (bf16 projections) against ``generate()`` under the same
    autocast and on a bf16 copy of the weights, with both samplers in fp32 beside them. ``speedup`` is
    over the faster of the two bf16 ``generate()`` runs."""
    never, device = model.config.vocab_size, model.device
    prompt = torch.ones(batch, 1, dtype=torch.long, device=device)
    half = copy.deepcopy(model).to(torch.bfloat16)

    def ours(bf16: bool):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            assert sample(model, prompt, length, eos_id=never, pad_id=0).tokens.shape == (batch, length)

    def theirs(generator, bf16: bool):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = generator.generate(prompt, do_sample=True, max_new_tokens=length, min_new_tokens=length,
                                     max_length=None, eos_token_id=None, pad_token_id=0, top_k=0, top_p=1.0)
        assert out.shape == (batch, length + 1)

    times = best_of_each([lambda: ours(True), lambda: theirs(model, True), lambda: theirs(half, False),
                          lambda: ours(False), lambda: theirs(model, False)], repeats)
    tokens = [batch * length / t for t in times]
    names = ("textgan_tokens_per_s", "generate_autocast_tokens_per_s", "generate_bf16_weights_tokens_per_s",
             "textgan_fp32_tokens_per_s", "generate_fp32_tokens_per_s")
    return {"length": length, "batch": batch, **dict(zip(names, tokens)), "speedup": min(times[1:3]) / times[0],
            "speedup_fp32": times[4] / times[3], "bf16_gain": times[3] / times[0]}


def median_round(results: list[dict]) -> dict:
    """Of several rounds of :func:`compare` at one length, the one with the median speed-up (the lower
    middle when even), with every round's speed-up under ``round_speedups``."""
    median = sorted(results, key=lambda r: r["speedup"])[(len(results) - 1) // 2]
    return {**median, "round_speedups": [r["speedup"] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=428, help="the embedded grammar's vocabulary size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; a GPU's results go to sampler_speed_cuda.{json,md}")
    parser.add_argument("--d-model", type=int, default=128, help="generator width (2 layers, 4 heads as the default)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per length; the table shows the median one")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: both samplers under bfloat16 autocast (and generate() on bf16 weights)")
    parser.add_argument("--name", default=None,
                        help="results file name, for another machine's run beside the recorded one (default "
                             "sampler_speed, or sampler_speed_d<width> for another --d-model, _bf16 after it for "
                             "--precision bf16)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    lengths = (5,) if args.quick else (20, 50)
    repeats, rounds = (1, 1) if args.quick else (10, args.rounds)
    torch.manual_seed(0)
    model = build_generator(args.vocab, bos_id=1, eos_id=2, pad_id=0, max_positions=64,
                            d_model=args.d_model).eval().to(args.device)
    narrow = build_generator(args.vocab, bos_id=1, eos_id=2, pad_id=0, max_positions=64, d_model=16).eval()
    narrow = narrow.to(args.device)
    by_length = {length: [] for length in lengths}
    for _ in range(rounds):  # rounds alternate between the lengths, so that a slow spell does not take one alone
        for length in lengths:
            by_length[length].append(compare_bf16(model, args.batch, length, repeats) if args.precision == "bf16"
                                     else compare(model, narrow, args.batch, length, repeats))
    rows = [median_round(results) for results in by_length.values()]
    which = "Default generator" if args.d_model == 128 else "Generator"
    setting = (f"{which} (Llama, d_model {args.d_model}, 2 layers), {rounds} rounds per length, each the best of "
               f"{repeats} interleaved runs of every column; each row is the round with the median speed-up. "
               f"{device_name(args.device)}.")
    name = args.name or ("sampler_speed" if args.d_model == 128 else f"sampler_speed_d{args.d_model}")
    if args.precision == "bf16":
        return report_bf16(rows, rounds, setting, None if args.quick else name + "_bf16", args.device)
    table = [("| length | batch | textgan sampler (tok/s) | `generate()` (tok/s) | speed-up (median round) "
              f"| speed-up, {rounds} rounds (min-max) | after a weight change (tok/s) | speed-up after a weight change "
              "| matmuls alone (tok/s) | speed-up bound | sampler at width 16 (tok/s) | matmuls + calls: speed-up |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        low, high = min(r["round_speedups"]), max(r["round_speedups"])
        table.append(f"| {r['length']} | {r['batch']} | {r['textgan_tokens_per_s']:,.0f} | {r['generate_tokens_per_s']:,.0f} "
                     f"| {r['speedup']:.2f}x | {low:.2f}-{high:.2f}x | {r['textgan_after_update_tokens_per_s']:,.0f} "
                     f"| {r['speedup_after_update']:.2f}x | {r['matmuls_only_tokens_per_s']:,.0f} "
                     f"| {r['speedup_bound']:.2f}x | {r['width16_tokens_per_s']:,.0f} | {r['matmuls_plus_calls_speedup']:.2f}x |")
    eager = [r for r in rows if "textgan_no_graphs_tokens_per_s" in r]
    if eager:
        table.append("")
        table.append("Without CUDA graphs (`textgan.models.fast_decode.CUDA_GRAPHS = False`): "
                     + "; ".join(f"length {r['length']}: {r['textgan_no_graphs_tokens_per_s']:,.0f} tok/s "
                                 f"({r['textgan_no_graphs_tokens_per_s'] / r['generate_tokens_per_s']:.2f}x `generate()`)"
                                 for r in eager) + ".")
    md = ("# Sampler speed: textgan KV-cache sampler vs `generate()`\n\n"
          f"{setting}\n\n" + "\n".join(table) + "\n\n"
          "*textgan sampler* is a call on weights unchanged since the calls before it (inference, evaluation): on "
          "a CPU its decoder reuses the previous decoder's folded and packed matrices. *After a weight change* is "
          "a call as training makes them, the weights changed since the last (its decoder folds and packs them "
          "again, about a millisecond).\n\n"
          "*Matmuls alone* times only the matrix products of the same decoding steps (q/k/v, attention scores and "
          "values, output projection, MLP, output layer) at the decoder's shapes; *speed-up bound* is `generate()`'s "
          "time over that: the most any sampler built on torch's matmuls could gain over `generate()` here, with "
          "all of its other work (norms, rotary, softmax, drawing tokens, Python) free. *Sampler at width 16* is "
          "textgan's sampler on a generator of the same depth, heads and vocabulary but width 16 (d_ff 64): the "
          "same tensor calls (each product through the library the full-width decoder uses for it) with next to "
          "no arithmetic; *matmuls + calls* is `generate()`'s time over the sum of "
          "the two, what a sampler would reach whose calls cost no more than ours and whose arithmetic were all "
          "matrix products.\n")
    print(md)
    if not args.quick:
        record(results_name(name, args.device), {"rows": rows}, md)


def report_bf16(rows: list[dict], rounds: int, setting: str, name: str | None, device: str) -> None:
    """Print (and record under ``name`` unless None) the table of :func:`compare_bf16`'s rounds."""
    table = [("| length | batch | textgan, bf16 autocast (tok/s) | `generate()`, bf16 autocast | `generate()`, bf16 "
              f"weights | speed-up over the faster (median round) | speed-up, {rounds} rounds (min-max) "
              "| textgan, fp32 | `generate()`, fp32 | speed-up in fp32 | textgan's bf16 gain |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        low, high = min(r["round_speedups"]), max(r["round_speedups"])
        table.append(f"| {r['length']} | {r['batch']} | {r['textgan_tokens_per_s']:,.0f} "
                     f"| {r['generate_autocast_tokens_per_s']:,.0f} | {r['generate_bf16_weights_tokens_per_s']:,.0f} "
                     f"| {r['speedup']:.2f}x | {low:.2f}-{high:.2f}x | {r['textgan_fp32_tokens_per_s']:,.0f} "
                     f"| {r['generate_fp32_tokens_per_s']:,.0f} | {r['speedup_fp32']:.2f}x | {r['bf16_gain']:.2f}x |")
    md = ("# Sampler speed under bf16 autocast: textgan KV-cache sampler vs `generate()`\n\n"
          f"{setting}\n\n" + "\n".join(table) + "\n\n"
          "Under bfloat16 autocast with `textgan.sampling.BF16_SAMPLING` set (opt-in), textgan's decoder runs "
          "its q/k/v and MLP projections in bf16 and its attention, norms, output layer and token draws in fp32 "
          "(`textgan.sampling.matmul_dtype`). `generate()` runs twice: on the fp32 model under the same autocast, "
          "and on a bf16 copy of the weights (`model.to(torch.bfloat16)`) without it; the speed-up is over the "
          "faster. The last columns time both samplers in fp32 in the same rounds; *textgan's bf16 gain* is its "
          "fp32 time over its bf16 time.\n")
    print(md)
    if name is not None:
        record(results_name(name, device), {"rows": rows}, md)


if __name__ == "__main__":
    main()
