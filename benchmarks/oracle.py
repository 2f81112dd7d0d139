"""The SeqGAN synthetic benchmark: NLL-oracle and NLL-test over a temperature sweep.

    python benchmarks/oracle.py            # full run
    python benchmarks/oracle.py --seed 1   # another training seed: its own runs (runs/bench_oracle_seed1) and results
    python benchmarks/oracle.py --name oracle_amd_epyc   # results under another name, beside the recorded ones
    python benchmarks/oracle.py --quick    # a smoke run

10,000 training and 2,000 held-out sequences of 20 tokens are sampled from the SeqGAN oracle
LSTM (``../shared/data/oracle/seqgan_oracle.npz``, seed 0 and 1), written as lines of token ids.
MLE trains on them; SeqGAN and ScratchGAN start from the MLE generator. Each model samples at
every temperature; NLL-oracle is the oracle's per-token NLL of the samples (quality), NLL-test
the model's per-token NLL on the held-out sequences at that temperature (coverage).

Our NLL-test counts the end token (21 tokens per sequence, the last nearly free), so it is
comparable between our models but sits slightly below a 20-token NLL-test. NLL-oracle is the
published quantity exactly. Samples that are not exactly 20 tokens are counted, not scored.
Writes benchmarks/results/oracle.{json,md,png} (oracle_seedN.* for --seed N > 0: the seed sets the
recipes' training and the sweep's samples; the data stay the same oracle samples).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _pipeline import fine_tune_settings, seeded, train_all
from _record import RESULTS, record

from textgan.evaluation import format_table, plot_sweep, sweep
from textgan.oracle import Oracle, from_text, to_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "oracle" / "seqgan_oracle.npz"
TEMPERATURES = [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
MODEL = ["max_length=20", "d_model=128", "n_layers=2", "n_heads=4", "valid_fraction=0.05"]
RECIPES = {
    # As on COCO, 10k sequences overfit the model within a few epochs: stop early (see its metrics.jsonl).
    "mle": ["steps=800", "eval_every=200", "checkpoint_every=400"],
    "seqgan": ["pretrain_steps=0", "disc_pretrain_steps=300", "steps=60", "num_rollouts=8", "eval_every=20",
               "checkpoint_every=20"],
    "scratchgan": [*fine_tune_settings(), "pretrain_steps=0", "steps=300", "eval_every=100", "checkpoint_every=100"],
}
PUBLISHED = {"MLE": 9.04, "SeqGAN": 8.74, "LeakGAN": 7.04, "RelGAN": 6.68, "oracle entropy": 5.75}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--oracle", type=Path, default=SHARED, help="the SeqGAN oracle parameters (npz)")
    parser.add_argument("--work", type=Path, default=None, help="where data and runs are kept (runs/bench_oracle[_seedN])")
    parser.add_argument("--samples", type=int, default=2000, help="samples per model and temperature")
    parser.add_argument("--retrain", action="store_true", help="train again even where a run exists")
    parser.add_argument("--seed", type=int, default=0, help="seed of the recipes' training and of the sweep's samples")
    parser.add_argument("--name", default=None, help="results name (default oracle, oracle_seedN), for another machine's "
                                                     "run beside the recorded one")
    args = parser.parse_args()
    name, args.work = seeded("oracle", args.seed, args.work)
    name = args.name or name
    if not args.oracle.is_file():
        sys.exit(f"error: {args.oracle} not found; pass --oracle with the path to seqgan_oracle.npz")
    if args.quick:
        args.work = args.work.with_name(args.work.name + "_quick")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    oracle = Oracle.load(args.oracle)
    n_train, n_test = (500, 200) if args.quick else (10_000, 2_000)
    for filename, count, data_seed in (("train.txt", n_train, 0), ("test.txt", n_test, 1)):
        if not (args.work / filename).is_file():
            (args.work / filename).write_text("\n".join(to_text(oracle.sample(count, data_seed))) + "\n")
    test = (args.work / "test.txt").read_text().splitlines()
    data = [f"data={args.work / 'train.txt'}", f"valid_file={args.work / 'test.txt'}"]
    train_s = train_all(args.work, [*data, *MODEL, f"seed={args.seed}"], RECIPES, args.quick, args.retrain)

    n = 200 if args.quick else args.samples
    temperatures = [0.8, 1.1] if args.quick else TEMPERATURES
    models = {recipe: str(args.work / recipe / "generator") for recipe in RECIPES}
    rows = sweep(models, temperatures, n, args.work / "sweep", metrics=["nll-oracle", "unique"], valid=test, oracle=oracle,
                 seed=args.seed)
    real_nll = oracle.nll(oracle.sample(n, seed=2))
    oracle_test_nll = oracle.nll(from_text(test)[0])  # the true model's NLL-test: the ideal point
    mle_t1 = next(r for r in rows if r["model"] == "mle" and r["temperature"] == 1.0) if not args.quick else rows[0]
    hits = [r for r in rows if r["model"] != "mle" and r["nll-oracle"] < 6.68 and r["nll-test"] <= mle_t1["nll-test"]]
    md = [f"# SeqGAN oracle: NLL-oracle and NLL-test over temperature ({n:,} samples per point)\n",
          format_table(rows, ["model", "temperature", "nll-oracle", "nll-test", "oracle-dropped", "unique"]), "",
          (f"The oracle itself: NLL-oracle of its samples {real_nll:.3f}, NLL on the held-out set {oracle_test_nll:.3f} "
           "(20 tokens, no end token). Published NLL-oracle: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()) + "."),
          "",
          f"## Bar: a GAN point with NLL-oracle < 6.68 and NLL-test no worse than MLE at T=1.0 ({mle_t1['nll-test']:.3f})",
          "",
          ("met by: " + ", ".join(f"{r['model']} T={r['temperature']:g} (NLL-oracle {r['nll-oracle']:.3f}, NLL-test "
                                  f"{r['nll-test']:.3f})" for r in hits)) if hits else "**not met**.",
          "", f"Training wall time (s): {train_s}; total {time.time() - started:.0f} s.", ""]
    markdown = "\n".join(md)
    print(markdown)
    if args.quick:
        return
    plot_sweep(rows, "nll-oracle", "nll-test", RESULTS / f"{name}.png", baselines={"the oracle itself": (real_nll, oracle_test_nll)},
               title=f"SeqGAN oracle: NLL-oracle vs NLL-test over temperature ({n} samples)")
    record(name, {"rows": rows, "oracle_samples_nll": real_nll, "train_s": train_s, "seed": args.seed,
                  "published": PUBLISHED}, markdown + f"\n![sweep]({name}.png)\n")


if __name__ == "__main__":
    main()
