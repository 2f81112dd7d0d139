"""The SeqGAN oracle: a proper distribution, reproducible samples, and the published entropy."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import shared_data

from textgan.oracle import PARAMETERS, Oracle, OracleError, from_text, to_text


def tiny_oracle(vocab=4, hidden=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"g_embeddings": (vocab, hidden), "Wo": (hidden, vocab), "bo": (vocab,)}
    params = {k: torch.randn(shapes.get(k, (hidden,) if k.startswith("b") else (hidden, hidden)), generator=g)
              for k in PARAMETERS}
    return Oracle(params)


def test_sequence_probabilities_sum_to_one():
    oracle = tiny_oracle()
    every = torch.tensor(list(itertools.product(range(4), repeat=3)))
    total = oracle.token_logprobs(every).sum(1).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-12)


def test_samples_are_reproducible_and_follow_the_model():
    oracle = tiny_oracle()
    a, b = oracle.sample(4000, seed=3), oracle.sample(4000, seed=3)
    assert torch.equal(a, b) and a.shape == (4000, 20)
    # the first token's empirical frequencies match its exact probabilities
    exact = oracle.token_logprobs(torch.arange(4)[:, None]).exp().squeeze(1)
    empirical = torch.bincount(a[:, 0], minlength=4).double() / 4000
    assert torch.allclose(empirical, exact, atol=4 * math.sqrt(0.25 / 4000))


def test_nll_and_sample_refuse_what_they_cannot_score():
    """No sequences was a ZeroDivisionError, an id past the vocabulary an index error deep in the LSTM, n=0 a
    torch.cat error."""
    oracle = tiny_oracle()
    with pytest.raises(ValueError, match="at least one sequence"):
        oracle.nll(torch.zeros(0, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must be in \\[0, 4\\), got 0..7"):
        oracle.nll(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="n and batch_size must be at least 1"):
        oracle.sample(0, seed=1)
    assert oracle.nll(torch.tensor([[0, 3]])) > 0


def test_text_round_trip_drops_malformed_lines():
    tokens = torch.tensor([[1, 2, 3], [0, 0, 4]])
    parsed, dropped = from_text(to_text(tokens) + ["1 2", "1 2 x", "1 2 9"], length=3, vocab_size=5)
    assert torch.equal(parsed, tokens) and dropped == 3


def test_load_errors(tmp_path):
    with pytest.raises(OracleError, match="not found"):
        Oracle.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(OracleError, match="not an npz"):
        Oracle.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", Wi=np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(OracleError, match="missing"):
        Oracle.load(tmp_path / "partial.npz")
    params = {k: v.numpy() for k, v in tiny_oracle().p.items()}
    np.savez(tmp_path / "oracle.npz", **params)
    assert Oracle.load(tmp_path / "oracle.npz").vocab_size == 4
    np.savez(tmp_path / "narrow.npz", **{**params, "Wo": params["Wo"][:, :2]})  # would fail in a matmul, later
    with pytest.raises(OracleError, match=r"Wo \(3, 2\) \(expected \(3, 4\)\)"):
        Oracle.load(tmp_path / "narrow.npz")


def test_evaluate_refuses_samples_that_are_not_oracle_sequences(tmp_path, capsys):
    """nll-oracle of a file with no line of 20 oracle ids: one line saying so, not a score of inf."""
    from textgan.cli import main

    np.savez(tmp_path / "oracle.npz", **{k: v.numpy() for k, v in tiny_oracle().p.items()})
    (tmp_path / "words.txt").write_text("a man riding a bike .\n")
    assert main(["evaluate", "--samples", str(tmp_path / "words.txt"), "--oracle", str(tmp_path / "oracle.npz")]) == 2
    assert "no line is an oracle sequence (20 token ids below 4" in capsys.readouterr().err
    assert main(["evaluate", "--samples", str(tmp_path / "words.txt"), "--metrics", "nll-oracle"]) == 2
    assert "needs --oracle" in capsys.readouterr().err


def test_sweep_with_an_oracle_refuses_a_model_that_cannot_write_oracle_ids(tmp_path, trained_generator, capsys):
    """A model of another vocabulary would only score inf at every temperature: one line, before any sampling.
    A model trained on the oracle's sequences is swept, with a finite NLL-oracle."""
    from textgan.cli import main
    from textgan.recipes import mle

    oracle = tiny_oracle()
    np.savez(tmp_path / "oracle.npz", **{k: v.numpy() for k, v in oracle.p.items()})
    words = ["sweep", "--model", str(trained_generator), "--oracle", str(tmp_path / "oracle.npz"), "-n", "8",
             "--temperatures", "1.0", "--output", str(tmp_path / "words")]
    assert main(words) == 2
    assert "cannot write oracle sequences (no token of its vocabulary is an oracle id, 0-3)" in capsys.readouterr().err
    assert not (tmp_path / "words").exists()

    (tmp_path / "train.txt").write_text("\n".join(to_text(oracle.sample(256, seed=0))) + "\n")
    # long enough to learn where a sequence ends (after 20 ids): samples of another length are not scored
    mle.main(mle.MLEConfig(data=str(tmp_path / "train.txt"), out_dir=str(tmp_path / "run"), d_model=32, n_layers=1,
                           n_heads=2, steps=150, lr=3e-3, batch_size=32, eval_samples=8, eval_every=1000,
                           checkpoint_every=1000))
    ids = ["sweep", "--model", str(tmp_path / "run"), "--oracle", str(tmp_path / "oracle.npz"), "-n", "8",
           "--temperatures", "1.0", "--metrics", "nll-oracle", "--output", str(tmp_path / "ids"), "--x", "nll-oracle",
           "--y", "nll-oracle"]
    assert main(ids) == 0, capsys.readouterr().err
    row, = json.loads((tmp_path / "ids" / "sweep.json").read_text())
    assert math.isfinite(row["nll-oracle"]) and row["oracle-dropped"] < 8


def test_real_oracle_entropy_matches_the_published_value():
    oracle = Oracle.load(shared_data("oracle", "seqgan_oracle.npz"))
    assert oracle.vocab_size == 5000
    # SeqGAN/Texygen report the oracle's own NLL on its samples as 5.75 nats/token
    assert oracle.entropy_estimate(n=1000, seed=0) == pytest.approx(5.75, abs=0.1)
    uniform = torch.randint(0, 5000, (200, 20), generator=torch.Generator().manual_seed(0))
    assert oracle.nll(uniform) > 8.0
