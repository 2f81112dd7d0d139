"""The lean teacher-forced forward (``textgan.models.fast_forward``) against the Hugging Face forward, in MLE steps.

    python benchmarks/train_forward.py            # d128 and d256, batch 64, 15 and 21 positions
    python benchmarks/train_forward.py --quick

Both run ``textgan.training.mle_step`` on the same batch (loss, gradient clipping, fused AdamW); only
the forward its teacher-forced pass takes differs. Steps alternate between the two (one, the other, ...), so that
the machine's drift falls on both alike, and each reports its median step. 15 positions is about
the mean width of the MLE recipe's batches (each cut to its longest sentence), 21 the widest. Each
step's FLOPs (``speed.train_flops_per_token``) are given as a fraction of the fp32 matmul ceiling,
measured in the same process before and after the steps (the lower of the two).

Then the bar's own measurement (issue #6: the MLE step at the larger size as a fraction of the
ceiling), ``speed.py``'s: the MLE recipe at d256 on its real batches, timed from its own log, run
in turn with the Hugging Face forward and with textgan's, three times each.
Writes benchmarks/results/train_forward.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from _record import record
from speed import BATCH, VOCAB, matmul_ceiling, mean_batch_width, step_seconds, train_flops_per_token

from textgan.models import build_generator, fast_forward
from textgan.training import adam, mle_step

SIZES = {"default (d128, 2 layers)": {"d_model": 128, "n_layers": 2}, "4x (d256, 2 layers)": {"d_model": 256, "n_layers": 2}}
FORWARDS = ("Hugging Face", "textgan")


@contextlib.contextmanager
def taking(forward: str):
    """Within it, textgan's teacher-forced passes take ``forward``: its own where it applies, as by
    default, or the Hugging Face one (``fast_forward.applies`` answering no)."""
    applies = fast_forward.applies
    if forward == "Hugging Face":
        fast_forward.applies = lambda model, device_type: False
    try:
        yield
    finally:
        fast_forward.applies = applies


def compare(size: dict, width: int, steps: int, warmup: int) -> dict:
    """Median seconds of an MLE step by each forward, ``steps`` of each, alternating."""
    torch.manual_seed(0)
    model = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, **size)
    optimizer = adam(model.parameters(), lr=1e-4)
    batch = torch.randint(3, VOCAB, (BATCH, width + 1))
    batch[:, 0] = 1
    times = {name: [] for name in FORWARDS}
    for i in range(warmup + steps):
        for name in FORWARDS:
            with taking(name):
                start = time.perf_counter()
                mle_step(model, optimizer, batch, eos_id=2)
                seconds = time.perf_counter() - start
            if i >= warmup:
                times[name].append(seconds)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def recipe_steps(size: dict, steps: int, runs: int) -> dict:
    """Seconds per MLE recipe step (``speed.step_seconds``), ``runs`` runs with each forward in turn."""
    seconds = {name: [] for name in FORWARDS}
    for _ in range(runs):
        for name in FORWARDS:
            with taking(name):
                seconds[name].append(step_seconds("mle", size, steps, {}, "cpu"))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, warmup, n = (3, 1, 512) if args.quick else (60, 5, 2048)
    before = matmul_ceiling(n, repeats=10)
    rows = []
    for name, size in SIZES.items():
        for width in (15, 21):
            seconds = compare(size, width, steps, warmup)
            flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, width) * BATCH * width
            rows.append({"size": name, "width": width, "seconds": seconds, "flops": flops})
            print(f"{name}, {width} positions: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()),
                  flush=True)
    size = SIZES["4x (d256, 2 layers)"]
    recipe_steps_n = 6 if args.quick else 20
    recipe = recipe_steps(size, recipe_steps_n, 1 if args.quick else 3)
    width = mean_batch_width(recipe_steps_n)
    recipe_flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, width) * BATCH * width
    ceiling = min(before, matmul_ceiling(n, repeats=10))
    lines = [(f"MLE steps, batch 64, vocabulary {VOCAB}; median of {steps} steps of each forward, alternating. fp32 "
              f"matmul ceiling ({n}x{n}, the lower of before and after): **{ceiling:.1f} GFLOP/s**."), "",
             "| generator | positions | Hugging Face forward (of ceiling) | textgan forward (of ceiling) | speed-up |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        hf, ours = row["seconds"]["Hugging Face"], row["seconds"]["textgan"]
        share = {k: row["flops"] / v / 1e9 / ceiling for k, v in row["seconds"].items()}
        lines.append(f"| {row['size']} | {row['width']} | {hf * 1e3:.1f} ms ({share['Hugging Face']:.0%}) "
                     f"| {ours * 1e3:.1f} ms ({share['textgan']:.0%}) | {hf / ours:.2f}x |")
    lines += ["", (f"The MLE recipe at d256 (batch 64, its real batches: {width:.1f} positions on average), seconds per "
                   f"step from its log, runs in turn, each as a fraction of the ceiling:"), "",
              "| forward | runs | of the ceiling |", "|---|---|---|"]
    for name, seconds in recipe.items():
        lines.append(f"| {name} | {', '.join(f'{s * 1e3:.1f} ms' for s in seconds)} "
                     f"| {', '.join(f'{recipe_flops / s / 1e9 / ceiling:.0%}' for s in seconds)} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if not args.quick:
        record("train_forward", {"matmul_ceiling_gflop_s": ceiling, "steps": steps, "rows": rows,
                                 "recipe": {"width": width, "flops": recipe_flops, "seconds": recipe}}, markdown)


if __name__ == "__main__":
    main()
