"""Where do the published NLL-oracle figures come from? MLE trained as SeqGAN trains it.

    python benchmarks/oracle_overfit.py            # full run, about 12 minutes on 2 CPU cores
    python benchmarks/oracle_overfit.py --quick    # a smoke run

SeqGAN (and Texygen after it) pretrains its generator by MLE for 120 epochs on the 10,000 oracle
sequences (an LSTM of the oracle's own shape, Adam 1e-2, batch 64, gradient norm clipped at 5) and
reports the NLL-oracle of its samples, with no held-out set. This script trains the same model the
same way (benchmarks/oracle_baselines.py's ``OracleShapedLSTM``, the same data and seeds as
oracle.py; PyTorch's default initialisation rather than SeqGAN's N(0, 0.1), and batches reshuffled
each epoch) and follows, over the epochs:

- NLL-test: per-token NLL of the 2,000 held-out oracle sequences (20 tokens, no end token);
- NLL-train: the same on the first 2,000 training sequences;
- NLL-oracle of 2,000 samples at temperature 1;
- how much of the samples is the training set's: 4-grams of the samples found in the training
  sequences, and samples equal to a training sequence.

If NLL-oracle keeps falling while NLL-test rises, a low NLL-oracle is reachable by fitting the
training sequences ever closer, at the cost of the held-out likelihood: the reason oracle.py's
bar pairs NLL-oracle with NLL-test. Writes benchmarks/results/oracle_overfit.{json,md}.
"""

from __future__ import annotations

import time

import torch
from _record import record
from oracle_baselines import OracleShapedLSTM, mle_epoch, oracle_data

from textgan.metrics import copy_rate, ngrams
from textgan.oracle import Oracle, to_text

EPOCHS = 120
REPORTED = (1, 2, 3, 5, 10, 20, 30, 40, 60, 80, 100, 120)


def evaluate(model: OracleShapedLSTM, oracle: Oracle, train: torch.Tensor, test: torch.Tensor,
             train_lines: set[str], train_4grams: set, generator: torch.Generator) -> dict:
    samples = model.sample(len(test), oracle.length, 1.0, generator)
    lines = to_text(samples)
    grams = [g for line in lines for g in ngrams(line.split(), 4)]
    return {"nll_test": model.nll(test), "nll_train": model.nll(train[:len(test)]), "nll_oracle": oracle.nll(samples),
            "seen_4grams": sum(g in train_4grams for g in grams) / len(grams), "copied": copy_rate(lines, train_lines)}


def main() -> None:
    started = time.time()
    args, oracle, train, test = oracle_data(__doc__)
    n_train, n_test, epochs = len(train), len(test), 3 if args.quick else EPOCHS
    train_lines = set(to_text(train))
    train_4grams = {g for line in train_lines for g in ngrams(line.split(), 4)}

    torch.manual_seed(0)
    model = OracleShapedLSTM(oracle.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    oracle_row = {"epoch": "the oracle", "nll_test": oracle.nll(test), "nll_train": oracle.nll(train[:n_test])}
    oracle_row |= {"nll_oracle": oracle.nll(oracle.sample(n_test, 3)), "seen_4grams": None, "copied": None}
    rows = []
    for epoch in range(1, epochs + 1):
        mle_epoch(model, optimizer, train, batch=64, clip=5.0)
        if epoch in REPORTED or epoch == epochs:
            rows.append({"epoch": epoch, **evaluate(model, oracle, train, test, train_lines, train_4grams, generator),
                         "seconds": round(time.time() - started)})
            print(rows[-1], flush=True)

    def cell(value, digits=3):
        return "" if value is None else f"{value:.{digits}f}"

    lines = ["| epoch | NLL-test | NLL-train | NLL-oracle (T=1) | sample 4-grams seen in training | samples copied |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows + [oracle_row]:
        lines.append(f"| {r['epoch']} | {cell(r['nll_test'])} | {cell(r['nll_train'])} | {cell(r['nll_oracle'])} "
                     f"| {cell(r['seen_4grams'])} | {cell(r['copied'])} |")
    best = min(rows, key=lambda r: r["nll_test"])
    md = ("# SeqGAN oracle: MLE trained as SeqGAN trains it (120 epochs, no held-out set)\n\n"
          f"An LSTM of the oracle's shape (embedding and hidden size 32), Adam 1e-2, batch 64, gradient norm clipped "
          f"at 5, on {n_train:,} oracle sequences; NLL-test on {n_test:,} held-out ones; NLL-oracle of {n_test:,} "
          "samples at temperature 1. NLLs per token over the 20 tokens (no end token). The last row is the oracle "
          "itself (its NLL-oracle: of its own fresh samples). Published NLL-oracle: MLE 9.04, SeqGAN 8.74, "
          "LeakGAN 7.04, RelGAN 6.68.\n\n" + "\n".join(lines) + "\n\n"
          f"Lowest NLL-test: {best['nll_test']:.3f} at epoch {best['epoch']} (NLL-oracle {best['nll_oracle']:.3f}); "
          f"at the last epoch NLL-test is {rows[-1]['nll_test']:.3f} and NLL-oracle {rows[-1]['nll_oracle']:.3f}.\n\n"
          f"Total {time.time() - started:.0f} s.\n")
    print(md)
    if not args.quick:
        record("oracle_overfit", {"rows": rows, "oracle": oracle_row}, md)


if __name__ == "__main__":
    main()
