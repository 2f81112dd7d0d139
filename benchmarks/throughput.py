"""Training throughput as the batch grows: the MLE step against the matmul ceiling, and a ScratchGAN step
against the MLE step on the same batch, at batch sizes from the recipes' 64 to ones that fill the device.

    python benchmarks/throughput.py --device cuda   # batches 64 to 32768; results go to throughput_cuda.{json,md}
    python benchmarks/throughput.py                 # CPU: batches 64 to 1024
    python benchmarks/throughput.py --quick         # a smoke run

``benchmarks/speed.py`` times the recipes at their batch of 64, where a GPU step is a few hundred kernel
launches with almost no arithmetic in each: there the MLE step reaches 1-2% of an H200's fp32 ceiling and
says more about launch latency than about the code. This benchmark asks what the same step functions
reach once the batch is large enough to keep the device busy, which is the batch a GPU run would use
(the GPU preset trains at 512; ``torchrun`` multiplies the global batch). For each generator size of
``speed.py`` and each batch size, in one process:

- the MLE step (``textgan.training.mle_step``: forward, backward, gradient clipping, fused AdamW) on
  random tokens as wide as the sampled batch: seconds, tokens/s, achieved GFLOP/s (the FLOP count of
  ``speed.py``) and the fraction of the fp32 matmul ceiling measured at the start of the run;
- the same step with the generator's forward under ``torch.compile`` (the recipes' ``compile=true``), at
  the larger size and the two largest batches (each compile takes tens of seconds);
- one ScratchGAN step as issue #6 defines it (``scratchgan.adversarial_step`` with one D update: sample,
  score, G update, D update) and its cost as a multiple of the eager MLE step.

Everything runs in fp32 (TF32 stays off, as torch leaves it), like the ceiling it is compared with.
"""

from __future__ import annotations

import argparse
import json

import torch
from _record import device_name, record, results_name
from sampler_speed import mean_seconds
from speed import SIZES, VOCAB, gan_step_on_same_batch, matmul_ceiling, train_flops_per_token

from textgan import memory
from textgan.models import build_generator
from textgan.training import adam, mle_step


def compiled_mle_step_s(size: dict, batch: int, width: int, repeats: int, device: str) -> float:
    """Mean seconds of an MLE step with the generator's forward compiled, after three compiling warm-up steps."""
    torch._dynamo.reset()  # a fresh cache: each new generator would otherwise count against the recompile limit
    torch.manual_seed(0)
    generator = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, max_positions=64, **size).to(device)
    generator.compile()
    optimizer = adam(generator.parameters(), lr=1e-3)
    tokens = torch.cat([torch.ones(batch, 1, dtype=torch.long, device=device),
                        torch.randint(3, VOCAB, (batch, width), device=device)], 1)
    return mean_seconds(lambda: mle_step(generator, optimizer, tokens, eos_id=2), repeats, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; a GPU's results go to throughput_cuda.{json,md}")
    args = parser.parse_args()
    memory.keep_freed_memory()  # as every textgan command does before it trains (textgan.memory)
    gpu = args.device.startswith("cuda")
    batches = (8, 32) if args.quick else (64, 1024, 8192, 32768) if gpu else (64, 256, 1024)
    repeats = 2 if args.quick else 10 if gpu else 3
    n = 512 if args.quick else 8192 if gpu else 2048
    ceiling, _ = matmul_ceiling(n, repeats=3 if args.quick else 10, device=args.device)
    print(f"matmul ceiling: {ceiling:.1f} GFLOP/s", flush=True)
    larger = list(SIZES)[-1]
    rows = []
    for name, size in SIZES.items():
        for batch in batches:
            gan = gan_step_on_same_batch(size, repeats, args.device, batch=batch)
            width = gan["sampled_width"]
            tokens = batch * (width + 1)  # positions predicted per step: the sampled tokens and the end token
            flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, width + 1) * tokens
            compiled_s = (compiled_mle_step_s(size, batch, width, repeats, args.device)
                          if name == larger and batch in batches[-2:] and not args.quick else None)
            row = {"size": name, "batch": batch, "positions": width + 1, "mle_step_s": gan["mle_same_batch_s"],
                   "mle_tok_s": tokens / gan["mle_same_batch_s"], "mle_gflop_s": flops / gan["mle_same_batch_s"] / 1e9,
                   "mle_fraction_of_ceiling": flops / gan["mle_same_batch_s"] / 1e9 / ceiling,
                   "mle_compiled_step_s": compiled_s,
                   "mle_compiled_fraction_of_ceiling": None if compiled_s is None else flops / compiled_s / 1e9 / ceiling,
                   "scratchgan_step_s": gan["gan_step_s"], "scratchgan_over_mle": gan["ratio"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    lines = [f"{device_name(args.device)}. Matmul ceiling ({n}x{n} fp32 through torch, best of 10): **{ceiling:.1f} GFLOP/s**.",
             "", ("| generator | batch | MLE step | MLE tok/s | MLE GFLOP/s (of ceiling) | MLE step, compiled (of ceiling) "
                  "| ScratchGAN step (x MLE) |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        compiled = ("" if r["mle_compiled_step_s"] is None else
                    f"{r['mle_compiled_step_s'] * 1e3:.1f} ms ({r['mle_compiled_fraction_of_ceiling']:.0%})")
        lines.append(f"| {r['size']} | {r['batch']:,} | {r['mle_step_s'] * 1e3:.1f} ms | {r['mle_tok_s']:,.0f} "
                     f"| {r['mle_gflop_s']:,.1f} ({r['mle_fraction_of_ceiling']:.0%}) | {compiled} "
                     f"| {r['scratchgan_step_s'] * 1e3:.1f} ms ({r['scratchgan_over_mle']:.1f}x) |")
    markdown = "\n".join(lines) + (
        "\n\nVocabulary 428 (the embedded grammar's), random tokens as wide as the batch the untrained generator "
        f"samples ({rows[0]['positions']} positions); fp32; means of {repeats} steps after a warm-up step "
        "(three for the compiled step, whose compilation they hold). ScratchGAN step: sample, score, one G "
        "update and one D update (`scratchgan.adversarial_step`, disc_steps=1), as a multiple of the eager "
        "MLE step on the same batch.\n")
    print(markdown)
    if not args.quick:
        record(results_name("throughput", args.device), {"matmul_ceiling_gflop_s": ceiling, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
