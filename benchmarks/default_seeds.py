"""The default GAN run, `python -m textgan.recipes.scratchgan`, over several seeds on this machine.

    python benchmarks/default_seeds.py                 # seeds 0-4, about 3-6 minutes each on 2 CPU cores
    python benchmarks/default_seeds.py --seeds 0,1     # some seeds
    python benchmarks/default_seeds.py --quick         # a smoke run: two seeds of a few steps, nothing recorded
    python benchmarks/default_seeds.py --set entropy_coef=0.05   # a candidate default, over the same seeds

One run of a GAN is one draw: seeds of the default differ by a few points of grammatical rate, and
a seed repeats bit for bit only on one CPU (another CPU rounds floats differently and follows
another trajectory). This runs the README's main command once per seed, each in a subprocess with
its own run folder (runs/default_seeds/seedN under the current folder), and tabulates each seed's
final evaluation and wall time, with the mean, the range and how many seeds reach issue #2's bar
(80% grammatical, distinct-4 within 20% of the corpus's, under 10 minutes). Results go to
benchmarks/results/default_seeds_<cpu>.{json,md}, one file per CPU model, so that the figures of
different machines stand side by side. ``--set KEY=VALUE`` (repeatable) runs a candidate change of
the defaults over the same seeds, into runs/default_seeds_KEY_VALUE/ and results named after it.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from _pipeline import run_recipe
from _record import cpu_model, record

QUICK = ["steps=3", "eval_samples=64", "grammar_sentences=500", "d_model=32", "n_layers=1"]
BAR_GRAMMATICAL, BAR_DIVERSITY, BAR_MINUTES = 0.80, 0.20, 10.0


def cpu_slug(model: str | None) -> str:
    """'AMD EPYC 7B13' -> 'amd_epyc_7b13'; 'Intel(R) Xeon(R) Processor' -> 'intel_xeon_processor'."""
    text = re.sub(r"\((r|tm)\)", "", (model or "cpu").lower())
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "cpu"


def meets_bar(row: dict) -> bool:
    """Issue #2's bar for one run: grammatical rate, diversity near the corpus's, wall time."""
    return (row["eval/grammatical"] >= BAR_GRAMMATICAL
            and row["eval/distinct_4"] >= (1 - BAR_DIVERSITY) * row["ref/distinct_4"] - 1e-9  # 0.8 * 0.75 > 0.6
            and row["wall_s"] < 60 * BAR_MINUTES)


def run_seed(seed: int, out: Path, quick: bool, changes: list[str] = ()) -> dict:
    overrides = [f"seed={seed}", "print_samples=0", *changes, f"out_dir={out}", *(QUICK if quick else [])]
    return {"seed": seed, **run_recipe("scratchgan", overrides, out, in_process=quick)}


def changes_slug(changes: list[str]) -> str:
    """['entropy_coef=0.05'] -> '_entropy_coef_0.05': the suffix of a candidate's run folders and results."""
    return "".join("_" + re.sub(r"[^A-Za-z0-9.]+", "_", change).strip("_") for change in changes)


def num(value: float | None) -> str:
    """A figure to three decimals; n/a where the run had none (no grammatical sample has a grammar NLL)."""
    return "n/a" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], cpu: str, changes: list[str] = ()) -> str:
    header = ("| seed | grammatical | distinct-4 (corpus) | NLL under grammar (corpus) | held-out NLL | unique | copied "
              "| wall time | bar |")
    lines = [header, "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {num(r['eval/grammatical'])} | {num(r['eval/distinct_4'])} "
                     f"({num(r['ref/distinct_4'])}) | {num(r['eval/grammar_nll'])} ({num(r['ref/grammar_nll'])}) | "
                     f"{num(r['eval/nll_valid'])} | {num(r['eval/unique'])} | {num(r['eval/copied'])} | "
                     f"{r['wall_s'] / 60:.1f} min | {'yes' if meets_bar(r) else 'no'} |")
    rates = [r["eval/grammatical"] for r in rows]

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    summary = (f"Over {len(rows)} seeds: grammatical **{100 * mean('eval/grammatical'):.1f}%** on average "
               f"({100 * min(rates):.1f}-{100 * max(rates):.1f}%), {sum(rate >= BAR_GRAMMATICAL for rate in rates)} "
               f"of {len(rows)} at or above 80%; distinct-4 {mean('eval/distinct_4'):.3f} (corpora "
               f"{mean('ref/distinct_4'):.3f}); held-out NLL {mean('eval/nll_valid'):.3f}; wall time "
               f"{min(r['wall_s'] for r in rows) / 60:.1f}-{max(r['wall_s'] for r in rows) / 60:.1f} min per run "
               f"(start-up included). Issue #2's bar (80% grammatical, distinct-4 within 20% of the corpus's, under "
               f"10 minutes) met by {sum(meets_bar(r) for r in rows)} of {len(rows)} runs.")
    title = f"with {', '.join(changes)}" if changes else "over seeds"
    return (f"# The default GAN run {title}, on one {cpu}\n\n"
            f"`python -m textgan.recipes.scratchgan seed=N print_samples=0{''.join(' ' + c for c in changes)}`, one run "
            "at a time; 1,000 samples at "
            "temperature 1.0 from the exported generator (the weight average), scored exactly by the grammar. "
            "In brackets: the same figure for the seed's training corpus.\n\n" + "\n".join(lines) + "\n\n"
            + summary + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)")
    parser.add_argument("--quick", action="store_true", help="two seeds of a few steps; records nothing")
    parser.add_argument("--work", default="", help="folder for the runs (default runs/default_seeds plus the --set "
                        "suffix; a --quick run uses a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a change of the recipe's defaults to run over the seeds (repeatable)")
    parser.add_argument("--name", default="", help="results file name (default default_seeds_<cpu> plus the --set "
                        "suffix), for a rerun beside the recorded one")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds is empty")
    if any("=" not in change or change.startswith(("seed=", "out_dir=")) for change in args.set):
        parser.error("--set takes KEY=VALUE, and not seed or out_dir (the benchmark sets those)")
    if args.quick:
        seeds = seeds[:2]
    suffix = changes_slug(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.quick else Path(args.work or f"runs/default_seeds{suffix}").resolve()
        rows = [run_seed(seed, work / f"seed{seed}", args.quick, args.set) for seed in seeds]
    cpu = cpu_model() or "CPU"
    md = markdown(rows, cpu, args.set)
    print(md)
    if not args.quick:
        name = args.name or f"default_seeds_{cpu_slug(cpu)}{suffix}"
        record(name, {"cpu_model": cpu, "changes": args.set, "rows": rows}, md)


if __name__ == "__main__":
    main()
