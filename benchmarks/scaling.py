"""Data-parallel scaling: one recipe, one global batch, 1 process against N processes under torchrun.

    python benchmarks/scaling.py                        # mle and scratchgan, d128 and d256, 1 and 2 processes
    python benchmarks/scaling.py --rounds 5             # more rounds (default 3), for a steadier median
    python benchmarks/scaling.py --quick                # a few steps, one round, not recorded

Each configuration runs the recipe on the embedded grammar corpus with the same global batch
and reports training sentences per second between the first and the last log line (start-up,
evaluation and export excluded). The machine's cores are split between the processes
(OMP_NUM_THREADS = cores / N). On a shared machine a run's speed drifts from minute to minute, so
the configurations run in rounds, every process count of a recipe and size one after another in
each round; a row gives the median over rounds of the rate and of the ratio to one process, and
the range of the ratio. Writes benchmarks/results/<name>.{json,md} (default ``scaling``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _record import record

RECIPES = {
    "mle": ["batch_size=256"],
    "scratchgan": ["batch_size=256", "pretrain_steps=0"],
}


def throughput(recipe: str, processes: int, steps: int, extra: list[str]) -> float:
    """Training sentences per second of ``recipe`` under torchrun with ``processes`` processes."""
    cores = os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // processes)))
    with tempfile.TemporaryDirectory() as out:
        log_every = max(1, steps // 5)
        args = [f"out_dir={out}", f"steps={steps}", f"log_every={log_every}", "eval_every=1000000",
                "checkpoint_every=1000000", "eval_samples=16", *extra]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", f"textgan.recipes.{recipe}", *args]
        subprocess.run(command, check=True, env=env, capture_output=True)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    batch = int(next(a.split("=")[1] for a in extra if a.startswith("batch_size=")))
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) * batch / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps at d128, one round; nothing recorded")
    parser.add_argument("--processes", default="1,2", help="process counts to compare, the first the base (default 1,2)")
    parser.add_argument("--d-model", default="128,256", help="generator widths (default 128,256: the default and 4x)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration; rows give the median")
    parser.add_argument("--steps", type=int, default=60, help="steps a run (default 60; --quick: 10)")
    parser.add_argument("--name", default="scaling", help="results name (default scaling)")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    widths = [128] if args.quick else [int(d) for d in args.d_model.split(",")]
    rounds, steps = (1, 10) if args.quick else (args.rounds, args.steps)
    if rounds < 1 or steps < 2 or not counts or min(counts) < 1:
        parser.error("--rounds must be at least 1, --steps at least 2 and every process count at least 1")
    runs: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for recipe, extra in RECIPES.items():
            for width in widths:
                for n in counts:
                    rate = throughput(recipe, n, steps, [*extra, f"d_model={width}"])
                    runs.setdefault(f"{recipe}/{width}/{n}", []).append(rate)
                    print(f"round {round_ + 1}: {recipe:<11} d{width} {n} process(es): {rate:8.1f} sentences/s",
                          flush=True)
    base_name = f"{counts[0]} process" + ("es" if counts[0] > 1 else "")
    header = (f"| recipe | d_model | processes | threads each | sentences/s (median) | vs {base_name} (median) | "
              f"vs {base_name} (range) |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    results = {}
    for key, rates in runs.items():
        recipe, width, n = key.split("/")
        base = runs[f"{recipe}/{width}/{counts[0]}"]
        ratios = [rate / b for rate, b in zip(rates, base)]  # against the base of the same round
        threads = max(1, (os.cpu_count() or 1) // int(n))
        results[key] = {"recipe": recipe, "d_model": int(width), "processes": int(n), "threads_each": threads,
                        "sentences_per_s": rates, "median_sentences_per_s": statistics.median(rates),
                        "ratios": ratios, "median_ratio": statistics.median(ratios)}
        lines.append(f"| {recipe} | {width} | {n} | {threads} | {statistics.median(rates):.1f} | "
                     f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        title = (f"# Data-parallel scaling under torchrun (global batch 256, embedded corpus, {steps} steps a run, "
                 f"{rounds} rounds)\n\n")
        record(args.name, results, title + table)


if __name__ == "__main__":
    main()
