"""Is the oracle bar out of reach because of the models or because of the data? The same models on more data.

    python benchmarks/oracle_data_scaling.py            # full run, about 40 minutes on 2 CPU cores
    python benchmarks/oracle_data_scaling.py --quick    # a smoke run

The oracle benchmark (benchmarks/oracle.py) trains on 10,000 sequences of the SeqGAN oracle, as the
published experiments do, and asks for NLL-oracle below 6.68 at an NLL-test no worse than MLE's
(7.545). benchmarks/oracle_baselines.py found every model we fit to those 10,000 sequences within
0.2 nats of a bigram table on held-out data. That could be our models' fault or the data's. Here the
same models learn from 10,000, 30,000 and 100,000 sequences of the oracle (seed 0: each set begins
with the smaller ones; held-out: the benchmark's 2,000 sequences, seed 1):

- the bigram table of oracle_baselines.py (smoothing chosen on the end of the training set);
- the LSTM of the oracle's own shape, MLE as in oracle_baselines.py (Adam 1e-2, batch 64), kept at
  its best held-out epoch (training stops two epochs after the last improvement, or at a cap);
- the MLE recipe's Transformer at oracle.py's size (d128, 2 layers), best held-out evaluation.

For the count and LSTM models, at temperatures 0.7-1.0: NLL-test of the tempered model (each
position's distribution raised to 1/T and renormalised) and NLL-oracle of 2,000 of its samples, i.e.
where each point sits on the bar's two axes. NLL-test is per token with the end token counted, as the
recipes report it (the count and LSTM models are given the end token for free: every sequence has 20
tokens). Writes benchmarks/results/oracle_data_scaling.{json,md}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _pipeline import run_recipe
from _record import record
from oracle_baselines import best_evaluation, bigram_sample, fit_bigram, oracle_command_line, train_lstm, with_start

from textgan.oracle import Oracle, to_text

SIZES = (10_000, 30_000, 100_000)
LSTM_EPOCHS = {10_000: 12, 30_000: 8, 100_000: 6}  # caps; training stops earlier once held-out NLL stalls
MLE_STEPS = {10_000: 1000, 30_000: 2000, 100_000: 4000}  # about 6, 4 and 2.5 epochs at batch 64
TEMPERATURES = (0.7, 0.8, 0.9, 1.0)
BAR = {"nll_oracle": 6.68, "nll_test": 7.545}  # benchmarks/results/oracle.md: MLE's NLL-test at T=1


def tempered_nll(logprobs: torch.Tensor, tokens: torch.Tensor, temperature: float) -> float:
    """Mean NLL of ``tokens`` (N, L) under log-probabilities (N, L, V) raised to 1/T and renormalised."""
    return float(F.cross_entropy((logprobs / temperature).flatten(0, 1), tokens.flatten()))


def bigram_row(oracle: Oracle, train: torch.Tensor, test: torch.Tensor, generator: torch.Generator) -> dict:
    table, lam, k = fit_bigram(train, oracle.vocab_size)
    logprobs = table.log()[with_start(test, oracle.vocab_size)].float()  # (N, L, V): each position's distribution
    return {"model": "bigram counts", "detail": f"lam {lam:g}, k {k:g}",
            "points": _points(oracle, logprobs, test,
                              lambda t: bigram_sample(table, len(test), oracle.length, t, generator))}


def lstm_row(oracle: Oracle, train: torch.Tensor, test: torch.Tensor, epochs: int, generator: torch.Generator) -> dict:
    model, epoch, curve = train_lstm(train, test, oracle.vocab_size, epochs, patience=2)
    with torch.no_grad():
        logits, _ = model(with_start(test, oracle.vocab_size))
    return {"model": "LSTM of the oracle's shape", "detail": f"epoch {epoch} of {len(curve)}",
            "points": _points(oracle, logits.log_softmax(-1), test,
                              lambda t: model.sample(len(test), oracle.length, t, generator))}


def _points(oracle: Oracle, logprobs: torch.Tensor, test: torch.Tensor, sample) -> dict:
    """{T: {"nll_test": the tempered model's NLL-test with the end token counted, "nll_oracle": NLL-oracle of
    ``sample(T)``}}."""
    scale = oracle.length / (oracle.length + 1)  # the end token, certain after 20 tokens, is one more at no cost
    return {t: {"nll_test": tempered_nll(logprobs, test, t) * scale, "nll_oracle": oracle.nll(sample(t))}
            for t in TEMPERATURES}


def transformer_row(train: torch.Tensor, test: torch.Tensor, length: int, steps: int, work: Path, quick: bool) -> dict:
    for name, split in (("train.txt", train), ("test.txt", test)):
        (work / name).write_text("\n".join(to_text(split)) + "\n")
    out = work / "mle"
    overrides = [f"data={work / 'train.txt'}", f"valid_file={work / 'test.txt'}", f"max_length={length}",
                 "d_model=128", "n_layers=2", "n_heads=4", f"steps={steps}", "eval_every=250", "eval_samples=100",
                 "checkpoint_every=100000", "print_samples=0", f"out_dir={out}"]
    if quick:
        overrides += ["steps=20", "eval_every=10", "d_model=32"]
    metrics = run_recipe("mle", overrides, out, in_process=quick)
    best, evals = best_evaluation(out)
    return {"model": "Transformer, MLE recipe (d128, 2 layers)", "detail": f"step {best['step']} of {steps}",
            "nll_test": best["eval/nll_valid"], "wall_s": metrics["wall_s"], "evals": evals}


def main() -> None:
    started = time.time()
    args, oracle = oracle_command_line(__doc__)
    sizes = (400,) if args.quick else SIZES
    n_test = 200 if args.quick else 2_000
    everything, test = oracle.sample(max(sizes), 0), oracle.sample(n_test, 1)
    generator = torch.Generator().manual_seed(2)
    rows = []
    for n in sizes:
        train = everything[:n]  # oracle.sample draws in batches from one generator: the first n of a larger set
        tick = time.time()
        found = [bigram_row(oracle, train, test, generator),
                 lstm_row(oracle, train, test, 2 if args.quick else LSTM_EPOCHS[n], generator)]
        with tempfile.TemporaryDirectory() as tmp:
            found.append(transformer_row(train, test, oracle.length, MLE_STEPS.get(n, 20), Path(tmp), args.quick))
        for row in found:
            rows.append({"train_sequences": n, **row})
        print(f"{n:,} sequences: {time.time() - tick:.0f} s", flush=True)
        for row in found:
            print(" ", row["model"], row.get("nll_test") or {t: p for t, p in row["points"].items()}, flush=True)
    oracle_test = oracle.nll(test)
    md = _markdown(rows, oracle_test, n_test, time.time() - started)
    print(md)
    if not args.quick:
        record("oracle_data_scaling", {"rows": rows, "oracle_test_nll": oracle_test, "bar": BAR}, md)


def _markdown(rows: list[dict], oracle_test: float, n_test: int, seconds: float) -> str:
    head = " | ".join(f"T={t:g}: NLL-test / NLL-oracle" for t in TEMPERATURES)
    lines = [f"| training sequences | model | kept at | {head} |", "|---:|---|---|" + "---:|" * len(TEMPERATURES)]
    for r in rows:
        if "points" in r:
            cells = " | ".join(f"{p['nll_test']:.3f} / {p['nll_oracle']:.3f}" for p in r["points"].values())
        else:
            cells = " | " * (len(TEMPERATURES) - 1) + f"{r['nll_test']:.3f} / (not sampled)"  # T=1 only
        lines.append(f"| {r['train_sequences']:,} | {r['model']} | {r['detail']} | {cells} |")
    return ("# SeqGAN oracle: the same models on more oracle sequences\n\n"
            f"Held-out: {n_test:,} oracle sequences (seed 1); the oracle's own NLL on them is {oracle_test:.3f} per "
            f"token (20 tokens). The bar: NLL-oracle below {BAR['nll_oracle']} at an NLL-test no worse than "
            f"{BAR['nll_test']}. Each cell: the tempered model's NLL-test (end token counted) / the NLL-oracle of "
            f"{n_test:,} samples at that temperature; the Transformer row gives its best held-out NLL at T=1 only."
            "\n\n" + "\n".join(lines) + f"\n\nTotal {seconds:.0f} s.\n")


if __name__ == "__main__":
    main()
