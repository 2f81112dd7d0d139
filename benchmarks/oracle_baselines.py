"""How much of the SeqGAN oracle can be learned from its 10,000 training sequences?

    python benchmarks/oracle_baselines.py            # full run, about 10 minutes on 2 CPU cores
    python benchmarks/oracle_baselines.py --quick    # a smoke run

The oracle benchmark (benchmarks/oracle.py) asks for a GAN with NLL-oracle below 6.68 whose
NLL-test is no worse than MLE's. This script puts that bar beside two reference points on the
same data (10,000 training and 2,000 held-out sequences of 20 tokens, seeds 0 and 1, as in
oracle.py):

- a unigram model (word counts of the training set, add-0.5 smoothing): its NLL-test, and the
  NLL-oracle of its samples at several temperatures; it knows nothing of context;
- a bigram count model (each word given the one before, interpolated with the unigram model;
  its two smoothing constants chosen on the last 1,000 training sequences, then refit on all):
  the most local context there is, learned by counting;
- an LSTM of the oracle's own shape (embedding and hidden size 32, the family the oracle belongs
  to), trained by MLE in this script: the lowest held-out NLL over its epochs, and the NLL-oracle
  of that epoch's samples;
- the MLE recipe at the benchmark's size and at smaller or more regularized ones: the lowest
  held-out NLL each reaches during training (evaluated every 250 steps) and the step it is at.

NLL-test is per token over the 20 tokens plus the end token, as textgan's recipes report it
(the count models are given the end token for free: every sequence has 20 tokens).
Writes benchmarks/results/oracle_baselines.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _pipeline import launch
from _record import record

from textgan.oracle import Oracle, to_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "oracle" / "seqgan_oracle.npz"
TEMPERATURES = [0.7, 0.8, 0.9, 1.0]
MLE_VARIANTS = {
    "d128, 2 layers (oracle.py's MLE)": ["d_model=128", "n_layers=2", "n_heads=4", "steps=1000"],
    "d128, 2 layers, lr 5e-4": ["d_model=128", "n_layers=2", "n_heads=4", "steps=1000", "lr=5e-4"],
    "d64, 2 layers, weight decay 0.1": ["d_model=64", "n_layers=2", "n_heads=4", "steps=1000", "weight_decay=0.1"],
    "d32, 2 layers": ["d_model=32", "n_layers=2", "n_heads=2", "steps=1500"],
}


def unigram(train: torch.Tensor, vocab: int, smoothing: float = 0.5) -> torch.Tensor:
    counts = torch.bincount(train.flatten(), minlength=vocab).double() + smoothing
    return counts / counts.sum()


BIGRAM_GRID = [(lam, k) for lam in (0.3, 0.5, 0.7, 0.9) for k in (0.01, 0.1, 1.0)]


def with_start(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Each position's previous word, (N, L); id ``vocab`` stands for the start of the sequence."""
    return torch.cat([torch.full((tokens.shape[0], 1), vocab, dtype=torch.long), tokens[:, :-1]], 1)


def bigram(train: torch.Tensor, vocab: int, lam: float, k: float) -> torch.Tensor:
    """p(x_t | x_{t-1}) as a (vocab + 1, vocab) table (last row: the start context):
    lam * (c(x_{t-1}, x_t) + k V u(x_t)) / (c(x_{t-1}) + k V) + (1 - lam) * u(x_t), u the unigram model."""
    counts = torch.zeros(vocab + 1, vocab, dtype=torch.float64)
    counts.index_put_((with_start(train, vocab).flatten(), train.flatten()),
                      torch.ones(train.numel(), dtype=torch.float64), accumulate=True)
    u = unigram(train, vocab)
    smoothed = (counts + k * vocab * u) / (counts.sum(1, keepdim=True) + k * vocab)
    return lam * smoothed + (1 - lam) * u


def bigram_nll(table: torch.Tensor, tokens: torch.Tensor) -> float:
    return -float(table[with_start(tokens, table.shape[1]), tokens].log().mean())


def fit_bigram(train: torch.Tensor, vocab: int) -> tuple[torch.Tensor, float, float]:
    """The interpolated bigram table of ``train``, its smoothing (lam, k) chosen from BIGRAM_GRID on the
    last 1,000 training sequences (a tenth, for fewer than 10,000), then refit on all of them."""
    held = min(1000, len(train) // 10)
    fits = {(lam, k): bigram_nll(bigram(train[:-held], vocab, lam, k), train[-held:]) for lam, k in BIGRAM_GRID}
    lam, k = min(fits, key=fits.get)
    return bigram(train, vocab, lam, k), lam, k


def bigram_sample(table: torch.Tensor, n: int, length: int, temperature: float, generator: torch.Generator):
    probs = table ** (1 / temperature)
    probs = (probs / probs.sum(1, keepdim=True)).float()
    out = torch.empty(n, length, dtype=torch.long)
    previous = torch.full((n,), table.shape[1], dtype=torch.long)
    for t in range(length):
        previous = out[:, t] = torch.multinomial(probs[previous], 1, generator=generator).squeeze(1)
    return out


class OracleShapedLSTM(torch.nn.Module):
    """The oracle's architecture with fresh weights: embedding 32, one LSTM layer of 32, a softmax over the vocabulary."""

    def __init__(self, vocab: int, dim: int = 32):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab + 1, dim)  # id ``vocab``: the start token
        self.lstm = torch.nn.LSTM(dim, dim, batch_first=True)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, previous: torch.Tensor, state=None):
        """previous: (N, L) words before each position -> ((N, L, vocab) logits, LSTM state)."""
        hidden, state = self.lstm(self.embedding(previous), state)
        return self.out(hidden), state

    @torch.no_grad()
    def nll(self, tokens: torch.Tensor) -> float:
        logits, _ = self(with_start(tokens, self.out.out_features))
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()))

    @torch.no_grad()
    def sample(self, n: int, length: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
        word, state, out = torch.full((n, 1), self.out.out_features), None, []
        for _ in range(length):
            logits, state = self(word, state)
            word = torch.multinomial((logits[:, -1] / temperature).softmax(-1), 1, generator=generator)
            out.append(word)
        return torch.cat(out, 1)


def mle_epoch(model: OracleShapedLSTM, optimizer: torch.optim.Optimizer, train: torch.Tensor, batch: int = 64,
              clip: float | None = None) -> None:
    """One pass over ``train`` in shuffled batches of cross-entropy; ``clip``: gradient-norm bound, or None."""
    vocab = model.out.out_features
    for rows in torch.randperm(len(train)).split(batch):
        logits, _ = model(with_start(train[rows], vocab))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), train[rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()


def train_lstm(train: torch.Tensor, test: torch.Tensor, vocab: int, epochs: int, lr: float = 1e-2, batch: int = 64,
               patience: int | None = None):
    """MLE with Adam for up to ``epochs`` epochs, or until ``patience`` epochs pass without a better
    held-out NLL; returns the model at its best held-out epoch, that epoch and [(epoch, NLL-test)]."""
    torch.manual_seed(0)
    model, best, curve = OracleShapedLSTM(vocab), None, []
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        mle_epoch(model, optimizer, train, batch)
        curve.append((epoch, model.nll(test)))
        if best is None or curve[-1][1] < best[1]:
            best = (epoch, curve[-1][1], {k: v.clone() for k, v in model.state_dict().items()})
        elif patience is not None and epoch - best[0] >= patience:
            break
    model.load_state_dict(best[2])
    return model, best[0], curve


def best_evaluation(out: Path) -> tuple[dict, list[tuple[int, float]]]:
    """A finished MLE run's evaluation with the lowest held-out NLL, and [(step, held-out NLL)] of all of them."""
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "eval/nll_valid" in e]
    return min(evals, key=lambda e: e["eval/nll_valid"]), [(e["step"], e["eval/nll_valid"]) for e in evals]


def oracle_command_line(description: str) -> tuple[argparse.Namespace, Oracle]:
    """The oracle scripts' command line (--quick, --oracle) and the oracle it names."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--oracle", type=Path, default=SHARED, help="the SeqGAN oracle parameters (npz)")
    args = parser.parse_args()
    if not args.oracle.is_file():
        sys.exit(f"error: {args.oracle} not found; pass --oracle with the path to seqgan_oracle.npz")
    return args, Oracle.load(args.oracle)


def oracle_data(description: str) -> tuple[argparse.Namespace, Oracle, torch.Tensor, torch.Tensor]:
    """:func:`oracle_command_line`, then the oracle's 10,000 training and 2,000 held-out sequences
    (seeds 0 and 1, as in oracle.py; 500 and 200 with --quick)."""
    args, oracle = oracle_command_line(description)
    n_train, n_test = (500, 200) if args.quick else (10_000, 2_000)
    return args, oracle, oracle.sample(n_train, 0), oracle.sample(n_test, 1)


def main() -> None:
    started = time.time()
    args, oracle, train, test = oracle_data(__doc__)
    n_train, n_test = len(train), len(test)

    probs = unigram(train, oracle.vocab_size)
    per_token = -float(probs.log()[test].mean())
    generator = torch.Generator().manual_seed(2)
    sampled = {}
    for t in TEMPERATURES:
        q = probs ** (1 / t)
        draws = torch.multinomial((q / q.sum()).float(), n_test * oracle.length, replacement=True, generator=generator)
        sampled[t] = oracle.nll(draws.view(n_test, oracle.length))
    length = oracle.length  # the end token, free to a unigram model, counts as one more token
    rows = [{"model": "unigram (add-0.5)", "nll_test": per_token * length / (length + 1), "best_step": None,
             "nll_oracle": sampled}]
    table, lam, k = fit_bigram(train, oracle.vocab_size)
    sampled = {t: oracle.nll(bigram_sample(table, n_test, length, t, generator)) for t in TEMPERATURES}
    rows.append({"model": f"bigram (interpolated; lam {lam:g}, k {k:g})", "best_step": None, "nll_oracle": sampled,
                 "nll_test": bigram_nll(table, test) * length / (length + 1)})

    model, epoch, curve = train_lstm(train, test, oracle.vocab_size, epochs=2 if args.quick else 12)
    sampled = {t: oracle.nll(model.sample(n_test, length, t, generator)) for t in TEMPERATURES}
    rows.append({"model": "LSTM of the oracle's shape (emb 32, hidden 32), MLE, Adam 1e-2", "best_step": f"epoch {epoch}",
                 "nll_oracle": sampled, "nll_test": model.nll(test) * length / (length + 1),
                 "evals": [(e, nll * length / (length + 1)) for e, nll in curve]})

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, split in (("train.txt", train), ("test.txt", test)):
            (work / name).write_text("\n".join(to_text(split)) + "\n")
        common = [f"data={work / 'train.txt'}", f"valid_file={work / 'test.txt'}", f"max_length={length}",
                  "eval_every=250", "eval_samples=100", "checkpoint_every=100000", "print_samples=0"]
        for label, overrides in list(MLE_VARIANTS.items())[: 1 if args.quick else None]:
            out = work / label.split(",")[0]
            extra = ["steps=20", "eval_every=10"] if args.quick else []
            print("running:", label, flush=True)
            with open(os.devnull, "w") as nowhere:  # in this process under --quick (_pipeline.launch)
                launch("mle", [*common, *overrides, *extra, f"out_dir={out}"], nowhere, in_process=args.quick)
            best, evals = best_evaluation(out)
            rows.append({"model": f"MLE {label}", "nll_test": best["eval/nll_valid"], "best_step": best["step"],
                         "nll_oracle": None, "evals": evals})
    oracle_test = oracle.nll(test)

    lines = ["| model | NLL-test (per token, end token included) | best at (step or epoch) | "
             + " | ".join(f"NLL-oracle T={t:g}" for t in TEMPERATURES) + " |",
             "|---|---:|---:|" + "---:|" * len(TEMPERATURES)]
    for r in rows:
        nll_oracle = r["nll_oracle"] or {}
        lines.append(f"| {r['model']} | {r['nll_test']:.3f} | {r['best_step'] or ''} | "
                     + " | ".join(f"{nll_oracle[t]:.3f}" if t in nll_oracle else "" for t in TEMPERATURES) + " |")
    md = ("# SeqGAN oracle: what 10,000 training sequences teach\n\n"
          f"{n_train:,} training and {n_test:,} held-out sequences from the oracle. The oracle's own NLL on the "
          f"held-out set is {oracle_test:.3f} per token (20 tokens); the published NLL-oracle figures are "
          "MLE 9.04, SeqGAN 8.74, LeakGAN 7.04, RelGAN 6.68.\n\n" + "\n".join(lines) + "\n\n"
          f"Total {time.time() - started:.0f} s.\n")
    print(md)
    if not args.quick:
        record("oracle_baselines", {"rows": rows, "oracle_test_nll": oracle_test}, md)


if __name__ == "__main__":
    main()
