"""Training steps with glibc's allocator as it comes against keeping freed memory (``textgan.memory``).

    python benchmarks/memory.py            # 5 pairs of processes
    python benchmarks/memory.py --pairs 9  # more pairs, for a steadier median
    python benchmarks/memory.py --quick    # a smoke run

The allocator is set when a process starts, so each setting runs in processes of its own, alternating
(``TEXTGAN_MALLOC=default``, then ``keep``, then ``default`` ...), so that a shared machine's slow spells
fall on both alike. Each process times, for the default generator (d128) and the 4x one (d256): the MLE step
on a batch of 64 x 22 tokens (median of 40 steps after 5), with its page faults, and one ScratchGAN step as
issue #6 defines it (sample, score, one D and one G update; ``speed.gan_step_on_same_batch``, mean of 20), and
its peak resident memory. Reports each pair and the median over pairs of each ratio. Writes
benchmarks/results/memory.{json,md}, or those of --name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _record import record

HERE = Path(__file__).resolve().parent
SIZES = {"d128": {"d_model": 128, "n_layers": 2, "n_heads": 4}, "d256": {"d_model": 256, "n_layers": 2, "n_heads": 4}}


def one_process(steps: int, gan_repeats: int) -> dict:
    """The timings of this process, under whatever TEXTGAN_MALLOC it was started with."""
    import resource
    import time

    import torch
    from speed import gan_step_on_same_batch

    from textgan import memory
    from textgan.models import build_generator
    from textgan.training import adam, mle_step

    kept = memory.keep_freed_memory()
    out = {"kept": kept, "setting": memory.describe()}
    for name, size in SIZES.items():
        torch.manual_seed(0)
        generator = build_generator(428, bos_id=1, eos_id=2, pad_id=0, **size)
        optimizer = adam(generator.parameters(), lr=1e-3, weight_decay=0.01)
        batch = torch.randint(3, 428, (64, 22))
        batch[:, 0] = 1
        for _ in range(5):
            mle_step(generator, optimizer, batch, 2)
        faults, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
        for _ in range(steps):
            start = time.perf_counter()
            mle_step(generator, optimizer, batch, 2)
            times.append(time.perf_counter() - start)
        out[name] = {"mle_step_s": statistics.median(times),
                     "mle_faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
                     "gan_step_s": gan_step_on_same_batch(size, gan_repeats, "cpu")["gan_step_s"]}
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="memory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps, gan_repeats = (3, 2) if args.quick else (40, 20)
    if args.child:
        print(json.dumps(one_process(steps, gan_repeats)))
        return
    pairs = []
    for _ in range(1 if args.quick else args.pairs):
        pair = {}
        for choice in ("default", "keep"):
            command = [sys.executable, str(HERE / "memory.py"), "--child"] + (["--quick"] if args.quick else [])
            result = subprocess.run(command, env={**os.environ, "TEXTGAN_MALLOC": choice}, capture_output=True,
                                    text=True, check=True)
            pair[choice] = json.loads(result.stdout.strip().splitlines()[-1])
        pairs.append(pair)
        print(json.dumps(pair), flush=True)
    lines = [("| pair | MLE d128: default / kept (faults a step) | MLE d256 | ScratchGAN step d128 | ScratchGAN step d256 "
              "| peak memory (MB) |"), "|---:|---|---|---|---|---|"]

    def cell(pair: dict, size: str, key: str) -> str:
        d, k = pair["default"][size], pair["keep"][size]
        faults = (f" ({d['mle_faults_per_step']:,.0f} / {k['mle_faults_per_step']:,.0f})"
                  if key == "mle_step_s" else "")
        return f"{d[key] * 1e3:.1f} / {k[key] * 1e3:.1f} ms = {d[key] / k[key]:.3f}x{faults}"

    for i, pair in enumerate(pairs, 1):
        lines.append(f"| {i} | {cell(pair, 'd128', 'mle_step_s')} | {cell(pair, 'd256', 'mle_step_s')} "
                     f"| {cell(pair, 'd128', 'gan_step_s')} | {cell(pair, 'd256', 'gan_step_s')} "
                     f"| {pair['default']['max_rss_mb']:.0f} / {pair['keep']['max_rss_mb']:.0f} |")
    medians = {f"{size}_{key}": statistics.median(p["default"][size][key] / p["keep"][size][key] for p in pairs)
               for size in SIZES for key in ("mle_step_s", "gan_step_s")}
    memory_ratio = statistics.median(p["keep"]["max_rss_mb"] / p["default"]["max_rss_mb"] for p in pairs)
    speedups = "; ".join(f"{k.replace('_step_s', ' step').replace('_', ' ')} {v:.3f}x" for k, v in medians.items())
    lines += ["", (f"Median over {len(pairs)} pairs, speed-up from keeping freed memory: {speedups}; peak memory "
                   f"{memory_ratio:.3f}x."), "",
              ("Each pair is two processes, one after the other: `TEXTGAN_MALLOC=default` (glibc's thresholds) then "
              "`keep` (`textgan.memory.keep_freed_memory`, what every textgan command does). MLE step: batch 64 x 22, "
              f"median of {steps} steps after 5, with its minor page faults; ScratchGAN step: sample, score, one D "
              f"and one G update, mean of {gan_repeats}. Peak memory: the process's maximum resident set.")]
    markdown = "# Keeping freed memory: training steps\n\n" + "\n".join(lines) + "\n"
    print(markdown)
    if not args.quick:
        record(args.name, {"pairs": pairs, "median_speedups": medians, "median_peak_memory_ratio": memory_ratio},
               markdown)


if __name__ == "__main__":
    main()
