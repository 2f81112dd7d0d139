"""The default recipes on the embedded grammar corpus, with exact quality numbers.

    python benchmarks/grammar_recipes.py            # each recipe as `python -m textgan.recipes.X` runs it
    python benchmarks/grammar_recipes.py --quick    # a smoke run, a few steps each

Runs every recipe with its defaults (plus ScratchGAN after an MLE warm-up, the default before
2026-11-28, and with ScratchGAN's own REINFORCE estimator from scratch) in a subprocess, and tabulates grammatical rate, NLL of samples under
the grammar, the generator's held-out NLL and diversity, against the training corpus.
Writes benchmarks/results/grammar_recipes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _pipeline import run_recipe
from _record import cpu_model, record

VARIANTS = [
    ("mle", "mle", []),
    ("mle, 8,000 steps", "mle", ["steps=8000"]),
    ("scratchgan", "scratchgan", []),
    ("scratchgan, MLE warm-up preset", "scratchgan", ["recipes/mle_warmup_scratchgan.yaml"]),
    ("scratchgan, MLE warm-up preset without the warm-up", "scratchgan",
     ["recipes/mle_warmup_scratchgan.yaml", "pretrain_steps=0", "steps=1100"]),
    ("scratchgan, REINFORCE from scratch (pure_scratchgan preset)", "scratchgan", ["recipes/pure_scratchgan.yaml"]),
    ("seqgan", "seqgan", []),
]
EARLIER = "2026-11-22 to 11-28, AMD EPYC"  # rows recorded before rows named their date and CPU
# --quick: a few steps of each, to check that the benchmark runs
QUICK = {
    "mle": ["steps=4", "eval_every=1000", "eval_samples=64", "grammar_sentences=500", "d_model=32", "n_layers=1"],
    "scratchgan": ["pretrain_steps=2"],
    "seqgan": ["pretrain_steps=2", "disc_pretrain_steps=2", "num_rollouts=2"],
}


def markdown(rows: list[dict]) -> str:
    """The results table of ``rows``, as recorded in grammar_recipes.md."""
    header = ("| recipe | wall time | grammatical | NLL under grammar | held-out NLL | distinct-4 (corpus) | unique | copied "
              "| measured |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [header]
    for r in rows:
        gnll = "n/a" if r.get("eval/grammar_nll") is None else f"{r['eval/grammar_nll']:.3f} ({r['ref/grammar_nll']:.3f})"
        lines.append(f"| {r['variant']} | {r['wall_s'] / 60:.1f} min | {r['eval/grammatical']:.3f} | {gnll} | "
                     f"{r['eval/nll_valid']:.3f} | {r['eval/distinct_4']:.3f} ({r['ref/distinct_4']:.3f}) | "
                     f"{r['eval/unique']:.3f} | {r['eval/copied']:.3f} | {r.get('measured', EARLIER)} |")
    return ("# Default recipes on the embedded grammar corpus\n\n"
            "Samples at temperature 1.0 (1,000 per run) scored exactly by the grammar. NLL in nats per token "
            "(end token included); in brackets, the same figure for the held-out corpus (the grammar's entropy "
            "rate) and distinct-4 of as many training sentences. A row not re-run keeps the figures of its last "
            "run; rows renamed when scratchgan's defaults changed (2026-11-28) keep, under `recorded_as` in "
            "grammar_recipes.json, the label and command they ran as, with the same settings.\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only this variant, named as in the table (repeat for several)")
    args = parser.parse_args()
    rows = []
    measured = f"{time.strftime('%Y-%m-%d', time.gmtime())}, {cpu_model() or 'CPU'}"  # rows of a table can differ
    with tempfile.TemporaryDirectory() as tmp:
        for label, recipe, extra in VARIANTS:
            if args.only and label not in args.only:
                continue
            out = Path(tmp) / label.replace(" ", "_").replace(",", "")
            overrides = [*extra, f"out_dir={out}"]  # a preset file, if any, comes first
            if args.quick:
                overrides += QUICK["mle"] + (QUICK[recipe] if recipe != "mle" else [])  # later values win
            result = run_recipe(recipe, overrides, out, in_process=args.quick)
            rows.append({"variant": label, "command": " ".join(["python", "-m", f"textgan.recipes.{recipe}", *extra]),
                         "measured": measured, **result})  # result holds the run's wall_s
    if args.only and not args.quick:  # re-run some variants: keep the recorded others
        from _record import RESULTS

        recorded = json.loads((RESULTS / "grammar_recipes.json").read_text())["results"]["rows"]
        fresh = {r["variant"]: r for r in rows}
        order = [label for label, _, _ in VARIANTS]
        rows = sorted([fresh.get(r["variant"], r) for r in recorded] + [r for r in rows if r["variant"] not in
                      {x["variant"] for x in recorded}], key=lambda r: order.index(r["variant"]))
    md = markdown(rows)
    print(md)
    if not args.quick:
        record("grammar_recipes", {"rows": rows}, md)


if __name__ == "__main__":
    main()
