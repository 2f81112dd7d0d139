"""Image COCO captions (the Texygen benchmark): MLE, SeqGAN and ScratchGAN over a temperature sweep.

    python benchmarks/coco.py            # full run (9-15 minutes on 2 CPU cores)
    python benchmarks/coco.py --seed 1   # another seed: its own runs (runs/bench_coco_seed1) and results
    python benchmarks/coco.py --quick    # a smoke run: a few steps, few samples, no FED
    python benchmarks/coco.py --mle mle-decay=lr_decay=0.3 --baseline mle-decay --name coco_tuned_mle
                                         # one more MLE run (the benchmark's MLE settings, changed), and
                                         # every curve set against its curve
    python benchmarks/coco.py --mle mle-decay=lr_decay=0.3 --start mle-decay --baseline mle-decay \\
        --name coco_from_tuned_mle       # also SeqGAN and ScratchGAN fine-tuned from that run
                                         # (seqgan-from-mle-decay, scratchgan-from-mle-decay)

1. MLE trains on train.txt (validation: test.txt).
2. SeqGAN and ScratchGAN start from the MLE generator (model=...: MLE pretraining, then
   adversarial fine-tuning), so the comparison asks one question: does the GAN phase move the
   model past the MLE quality-diversity curve?
3. Each model samples --samples sentences at every temperature, scored with BLEU-2..5 against
   all of test.txt, leave-one-out Self-BLEU-2..5, NLL-test at that temperature, FED (MiniLM,
   against all of test.txt), distinct-4, unique and copied rates. Real training sentences are
   scored the same way as the reference point.

Runs are kept under --work and reused when their exported generator exists (--retrain to redo).
Writes benchmarks/results/coco.{json,md,png} (coco_seedN.* for --seed N > 0): the seed sets the
recipes' training (initialisation, batches, sampling) and the sweep's samples.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

from _pipeline import fine_tune_settings, seeded, train_all
from _record import RESULTS, record

from textgan.evaluation import format_table, plot_sweep, score, sweep

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco"
TEMPERATURES = [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
# Words seen once in train.txt become <unk> (vocab_size keeps the 3,151 words seen twice or more), so the
# model learns a probability for unknown words: 5.7% of test.txt's tokens are not in train.txt at all.
MODEL = ["max_length=32", "vocab_size=3155", "d_model=128", "n_layers=2", "n_heads=4"]
RECIPES = {
    # Early-stopped: held-out NLL is lowest near 750 steps (3.84) and rises after (3.87 at 1000, 6.4 at 3000):
    # 10k captions overfit a 1M-parameter model within a few epochs.
    "mle": ["steps=800", "eval_every=400", "checkpoint_every=400"],
    "seqgan": ["pretrain_steps=0", "disc_pretrain_steps=300", "steps=60", "num_rollouts=8", "eval_every=20",
               "checkpoint_every=20"],
    "scratchgan": [*fine_tune_settings(), "pretrain_steps=0", "steps=300", "eval_every=100", "checkpoint_every=100"],
}
# Texygen's published table (Zhu et al. 2018, Image COCO). Their Self-BLEU used 500 sentences.
PUBLISHED = {
    "MLE": {"bleu": [0.731, 0.497, 0.305, 0.189], "self-bleu": [0.916, 0.769, 0.583, 0.408]},
    "LeakGAN": {"bleu": [0.746, 0.528, 0.355, 0.230], "self-bleu": [0.966, 0.913, 0.848, 0.780]},
    "SeqGAN": {"bleu": [0.745, 0.498, 0.294, 0.180], "self-bleu": None},
}



def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y of the piecewise-linear curve through points at x, or None outside its range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def against_mle(rows: list[dict], model: str, quality: str = "bleu-5", diversity: str = "self-bleu-4",
                baseline: str = "mle") -> list[dict]:
    """For each of the model's points: the baseline's (MLE's) BLEU at the same Self-BLEU, and the difference."""
    mle = [(r[diversity], r[quality]) for r in rows if r["model"] == baseline]
    out = []
    for r in rows:
        if r["model"] == model:
            mle_quality = interpolate(mle, r[diversity])
            out.append({"temperature": r["temperature"], diversity: r[diversity], quality: r[quality],
                        f"{baseline} {quality} at same {diversity}": mle_quality,
                        "difference": None if mle_quality is None else r[quality] - mle_quality})
    return out


def plot(rows: list[dict], real_row: dict, n: int, name: str = "coco") -> None:
    baselines = {"real text (train)": (real_row["bleu-5"], real_row["self-bleu-4"])}
    plot_sweep(rows, "bleu-5", "self-bleu-4", RESULTS / f"{name}.png", baselines=baselines,
               title=f"Image COCO, {n} samples per point\n(right: better quality; down: more diverse)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder with COCO train.txt and test.txt")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept (runs/bench_coco[_seedN])")
    parser.add_argument("--samples", type=int, default=2000, help="samples per model and temperature")
    parser.add_argument("--retrain", action="store_true", help="train again even where a run exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", action="store_true", help="redraw results/coco.png from results/coco.json")
    parser.add_argument("--mle", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                        help="one more MLE run: the benchmark's MLE settings with these changed, trained into "
                             "WORK/LABEL and swept beside the others (e.g. mle-decay=lr_decay=0.3)")
    parser.add_argument("--baseline", default="mle", metavar="LABEL",
                        help="the MLE run whose curve every other model is set against (default mle)")
    parser.add_argument("--start", default="mle", metavar="LABEL",
                        help="an --mle label: SeqGAN and ScratchGAN also fine-tune from that run, as "
                             "seqgan-from-LABEL and scratchgan-from-LABEL, beside the ones from mle")
    parser.add_argument("--name", default=None, help="results name (default coco, coco_seedN)")
    args = parser.parse_args()
    name, args.work = seeded("coco", args.seed, args.work)
    name = args.name or name
    extra = {}
    for spec in args.mle:
        label, _, changes = spec.partition("=")
        if not changes or label in RECIPES or "=" not in changes:
            sys.exit(f"error: --mle {spec}: give LABEL=KEY=VALUE[,KEY=VALUE] with a new label")
        extra[label] = ("mle", [*RECIPES["mle"], *changes.split(",")])
    if args.baseline not in {"mle", *extra}:
        sys.exit(f"error: --baseline {args.baseline}: give mle or an --mle label")
    if args.start not in {"mle", *extra}:
        sys.exit(f"error: --start {args.start}: give mle or an --mle label")
    if args.plot_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())["results"]
        plot(saved["rows"], saved["real"], saved["rows"][0]["samples"], name)
        return
    if not (args.data / "train.txt").is_file() or not (args.data / "test.txt").is_file():
        sys.exit(f"error: {args.data} lacks train.txt/test.txt; pass --data with the COCO folder (../shared/data/coco)")
    if args.quick:
        args.work = args.work.with_name(args.work.name + "_quick")
    args.work.mkdir(parents=True, exist_ok=True)
    gans = ["seqgan", "scratchgan"]
    if args.start != "mle":  # after the --mle runs in `extra`, so trained after the one they start from
        from_start = {f"{gan}-from-{args.start}": (gan, [*RECIPES[gan], f"model={args.work / args.start / 'generator'}"])
                      for gan in gans}
        extra |= from_start
        gans += from_start
    runs = {**RECIPES, **extra}
    started = time.time()
    data = [f"data={args.data / 'train.txt'}", f"valid_file={args.data / 'test.txt'}"]
    train_s = train_all(args.work, [*data, *MODEL, f"seed={args.seed}"], runs, args.quick, args.retrain)

    references = (args.data / "test.txt").read_text(encoding="utf-8").splitlines()
    training = (args.data / "train.txt").read_text(encoding="utf-8").splitlines()
    n = 200 if args.quick else args.samples
    temperatures = [0.8, 1.1] if args.quick else TEMPERATURES
    metrics = ["bleu", "self-bleu", "distinct", "unique", "copied"] + ([] if args.quick else ["fed"])
    encoder = None
    if "fed" in metrics:
        from textgan.fed import load_encoder

        encoder = load_encoder()
    models = {label: str(args.work / label / "generator") for label in runs}
    rows = sweep(models, temperatures, n, args.work / "sweep", metrics=metrics, references=references, valid=references,
                 train=training, encoder=encoder, seed=args.seed)
    real = random.Random(args.seed).sample(training, n)
    real_row = {"model": "real text (train)", "temperature": None,
                **score(real, [m for m in metrics if m != "copied"], references=references, encoder=encoder)}

    columns = ["model", "temperature", "bleu-2", "bleu-3", "bleu-4", "bleu-5", "self-bleu-2", "self-bleu-3", "self-bleu-4",
               "self-bleu-5", "nll-test", "fed", "distinct-4", "unique", "copied"]
    columns = [c for c in columns if any(c in r for r in rows)]
    comparisons = {m: against_mle(rows, m, baseline=args.baseline) for m in models if m != args.baseline}
    best = [r for r in rows if r["model"] in gans and r["bleu-5"] >= 0.230 and r["self-bleu-5"] <= 0.50]
    published = ["| published (Texygen) | BLEU-2 | BLEU-3 | BLEU-4 | BLEU-5 | Self-BLEU-2 | Self-BLEU-3 | Self-BLEU-4 | Self-BLEU-5 |",
                 "|---|---|---|---|---|---|---|---|---|"]
    for label, p in PUBLISHED.items():
        sb = p["self-bleu"] or ["-"] * 4
        published.append(f"| {label} | " + " | ".join(str(v) for v in p["bleu"] + sb) + " |")
    md = [f"# Image COCO: quality-diversity sweep ({n:,} samples per point, {len(references):,} references)\n",
          format_table(rows + [real_row], columns), "",
          ("Published numbers for comparison (Texygen; their Self-BLEU used only 500 sentences, so it is not comparable "
           "to ours, which scores each of our samples against all the others):"), "", "\n".join(published), "",
          (f"## Against the {args.baseline} curve (BLEU-5 at the same Self-BLEU-4; positive: above {args.baseline})"
           if args.baseline != "mle" else
           "## GAN against the MLE curve (BLEU-5 at the same Self-BLEU-4; positive: the GAN is above MLE)"), ""]
    for model, comparison in comparisons.items():
        md += [f"**{model}**", "", format_table(comparison), ""]
    md += ["## Bar: a GAN point with BLEU-5 >= 0.230 at Self-BLEU-5 <= 0.50", "",
           ("met by: " + ", ".join(f"{r['model']} T={r['temperature']:g} (BLEU-5 {r['bleu-5']:.3f}, Self-BLEU-5 "
                                    f"{r['self-bleu-5']:.3f})" for r in best)) if best else "**not met**: no GAN point reaches it.",
           "", f"Training wall time (s): {train_s}; total {time.time() - started:.0f} s.", ""]
    markdown = "\n".join(md)
    print(markdown)
    if args.quick:
        return
    plot(rows, real_row, n, name)
    record(name, {"rows": rows, "real": real_row, "against_mle": comparisons, "baseline": args.baseline,
                  "train_s": train_s, "seed": args.seed, "published": PUBLISHED}, markdown + f"\n![sweep]({name}.png)\n")


if __name__ == "__main__":
    main()
