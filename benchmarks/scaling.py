"""Data-parallel scaling: one recipe, one global batch, 1 process against N processes under torchrun.

    python benchmarks/scaling.py                 # mle and scratchgan, 1 and 2 processes
    python benchmarks/scaling.py --quick         # a few steps, not recorded

Each configuration runs the recipe on the embedded grammar corpus with the same global batch
and reports training sentences per second between the first and the last log line (start-up,
evaluation and export excluded). The machine's cores are split between the processes
(OMP_NUM_THREADS = cores / N). Writes benchmarks/results/scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--processes", default="1,2", help="process counts to compare (default 1,2)")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    steps = 10 if args.quick else 60
    results = {}
    for recipe, extra in RECIPES.items():
        for n in counts:
            rate = throughput(recipe, n, steps, extra)
            results[f"{recipe}/{n}"] = {"recipe": recipe, "processes": n, "sentences_per_s": rate}
            print(f"{recipe:<11} {n} process(es): {rate:8.1f} sentences/s", flush=True)
    lines = ["| recipe | processes | threads each | sentences/s | vs 1 process |", "|---|---:|---:|---:|---:|"]
    for row in results.values():
        base = results[f"{row['recipe']}/{counts[0]}"]["sentences_per_s"]
        threads = max(1, (os.cpu_count() or 1) // row["processes"])
        lines.append(f"| {row['recipe']} | {row['processes']} | {threads} | {row['sentences_per_s']:.1f} | "
                     f"{row['sentences_per_s'] / base:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        record("scaling", results, "# Data-parallel scaling under torchrun (global batch 256, embedded corpus)\n\n" + table)


if __name__ == "__main__":
    main()
