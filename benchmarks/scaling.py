"""Data-parallel scaling: one recipe, one global batch, the machine's cores as threads of one process, as
torchrun processes, and one core alone.

    python benchmarks/scaling.py                        # mle and scratchgan, d128 and d256, layouts 1xN, Nx1, 1x1
    python benchmarks/scaling.py --rounds 5             # more rounds (default 3), for a steadier median
    python benchmarks/scaling.py --layouts 1x4,2x2,4x1  # other PROCESSESxTHREADS layouts, the first the base
    python benchmarks/scaling.py --quick                # a few steps of mle, one round, not recorded

Each configuration runs the recipe under torchrun on the embedded grammar corpus with the same global
batch and reports training sentences per second between the first and the last log line (start-up,
evaluation and export excluded); OMP_NUM_THREADS sets each process's threads. The default layouts on
N cores answer two questions: do N processes of one thread train as fast as one process of N threads
(1xN against Nx1), and how much faster than one core alone do N processes train, each on its own core
(Nx1 against 1x1: data parallelism's own speed-up, which more cores or machines extend). On a shared
machine a run's speed drifts from minute to minute, so the configurations run in rounds, every layout
of a recipe and size one after another in each round; a row gives the median over rounds of the rate
and of each ratio (each within its round), and the range of the ratio to the base. Writes
benchmarks/results/<name>.{json,md} (default ``scaling``).
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


def throughput(recipe: str, processes: int, threads: int, steps: int, extra: list[str]) -> float:
    """Training sentences per second of ``recipe`` under torchrun, ``processes`` processes of ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
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


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """'1x2,2x1,1x1' -> [(1, 2), (2, 1), (1, 1)]: processes x threads each."""
    layouts = []
    for item in text.split(","):
        processes, _, threads = item.strip().partition("x")
        if not (processes.isdigit() and threads.isdigit() and int(processes) > 0 and int(threads) > 0):
            raise ValueError(item)
        layouts.append((int(processes), int(threads)))
    return layouts


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps of mle at d128, one round; nothing recorded")
    parser.add_argument("--layouts", default=f"1x{cores},{cores}x1,1x1",
                        help=f"PROCESSESxTHREADS each, comma-separated, the first the base (default here 1x{cores},"
                             f"{cores}x1,1x1: the cores as threads of one process, as processes, and one core alone)")
    parser.add_argument("--d-model", default="128,256", help="generator widths (default 128,256: the default and 4x)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration; rows give the median")
    parser.add_argument("--steps", type=int, default=60, help="steps a run (default 60; --quick: 10)")
    parser.add_argument("--name", default="scaling", help="results name (default scaling)")
    args = parser.parse_args()
    try:
        layouts = parse_layouts(args.layouts)
    except ValueError as e:
        parser.error(f"--layouts: {e} is not PROCESSESxTHREADS with two positive integers, e.g. 2x1")
    widths = [d.strip() for d in args.d_model.split(",")]
    if not all(d.isdigit() and int(d) > 0 for d in widths):
        parser.error(f"--d-model: give positive widths separated by commas, e.g. 128,256, not {args.d_model!r}")
    widths = [128] if args.quick else [int(d) for d in widths]
    rounds, steps = (1, 10) if args.quick else (args.rounds, args.steps)
    if rounds < 1 or steps < 2:
        parser.error("--rounds must be at least 1 and --steps at least 2")
    recipes = {"mle": RECIPES["mle"]} if args.quick else RECIPES
    runs: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for recipe, extra in recipes.items():
            for width in widths:
                for processes, threads in layouts:
                    rate = throughput(recipe, processes, threads, steps, [*extra, f"d_model={width}"])
                    runs.setdefault(f"{recipe}/{width}/{processes}x{threads}", []).append(rate)
                    print(f"round {round_ + 1}: {recipe:<11} d{width} {processes} process(es) x {threads} thread(s): "
                          f"{rate:8.1f} sentences/s", flush=True)
    processes, threads = layouts[0]
    base = f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    one_core = (1, 1) in layouts and layouts[0] != (1, 1)
    header = (f"| recipe | d_model | processes | threads each | sentences/s (median) | vs {base} (median) | "
              f"vs {base} (range) |" + (" vs 1 process x 1 thread (median) |" if one_core else ""))
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if one_core else "")]
    results = {}
    for key, rates in runs.items():
        recipe, width, layout = key.split("/")
        processes, threads = map(int, layout.split("x"))
        first = runs[f"{recipe}/{width}/{layouts[0][0]}x{layouts[0][1]}"]
        ratios = [rate / b for rate, b in zip(rates, first)]  # against the base of the same round
        row = {"recipe": recipe, "d_model": int(width), "processes": processes, "threads_each": threads,
               "sentences_per_s": rates, "median_sentences_per_s": statistics.median(rates),
               "ratios": ratios, "median_ratio": statistics.median(ratios)}
        line = (f"| {recipe} | {width} | {processes} | {threads} | {statistics.median(rates):.1f} | "
                f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |")
        if one_core:
            alone = runs[f"{recipe}/{width}/1x1"]
            row["ratios_to_one_core"] = [rate / b for rate, b in zip(rates, alone)]
            line += f" {statistics.median(row['ratios_to_one_core']):.2f}x |"
        results[key] = row
        lines.append(line)
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        title = (f"# Data-parallel scaling under torchrun (global batch 256, embedded corpus, {steps} steps a run, "
                 f"{rounds} rounds)\n\n")
        record(args.name, results, title + table)


if __name__ == "__main__":
    main()
