import os
import random
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("TEXTGAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


# A recipe run small enough for a test: a 200-sentence grammar corpus and a one-layer, 32-wide generator.
TINY_RUN = {"grammar_sentences": 200, "d_model": 32, "n_layers": 1, "n_heads": 2, "batch_size": 8, "eval_samples": 16,
            "eval_every": 2, "log_every": 1, "checkpoint_every": 2, "print_samples": 1}


def shared_data(*parts: str) -> Path:
    """Path into ../shared/data; skips the test with a reason where the data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared benchmark data sits beside the repository in CI (set TEXTGAN_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sentences():
    from textgan.grammar import Grammar

    return Grammar.default().sample_corpus(300, seed=0)


@pytest.fixture(scope="session")
def word_tokenizer(sentences):
    from textgan.tokenization import build_word_tokenizer

    return build_word_tokenizer(sentences)


@pytest.fixture()
def tiny_generator(word_tokenizer):
    from textgan.models import build_generator
    from textgan.tokenization import special_ids

    bos, eos, pad = special_ids(word_tokenizer)
    return build_generator(len(word_tokenizer), bos_id=bos, eos_id=eos, pad_id=pad, d_model=32, n_layers=2,
                           n_heads=2, max_positions=24).eval()


@pytest.fixture(scope="session")
def trained_generator(tmp_path_factory):
    """The exported generator folder of a two-step MLE run on the grammar corpus."""
    from textgan.recipes import mle

    out = tmp_path_factory.mktemp("trained") / "run"
    mle.main(mle.MLEConfig(out_dir=str(out), grammar_sentences=200, d_model=32, n_layers=1, n_heads=2, steps=2,
                           batch_size=8, eval_samples=8, eval_every=100, checkpoint_every=100))
    return out / "generator"


POSITIVE = ["good", "great", "tasty", "friendly", "lovely"]
NEGATIVE = ["bad", "awful", "bland", "rude", "terrible"]
THINGS = ["the food", "the staff", "our waiter", "the pizza", "the place", "my burger", "the service"]


def _sentences(words, n, seed):
    rng = random.Random(seed)
    return [f"{rng.choice(THINGS)} was {rng.choice(['really ', 'very ', ''])}{rng.choice(words)} ." for _ in range(n)]


@pytest.fixture(scope="session")
def style_folder(tmp_path_factory):
    """A two-style corpus (sentiment words swapped), with test files and human-style references."""
    folder = tmp_path_factory.mktemp("styles")
    for style, words, other in (("neg", NEGATIVE, POSITIVE), ("pos", POSITIVE, NEGATIVE)):
        (folder / f"train.{style}").write_text("\n".join(_sentences(words, 300, len(style))) + "\n")
        (folder / f"dev.{style}").write_text("\n".join(_sentences(words, 20, 7)) + "\n")
        test = _sentences(words, 12, 9)
        (folder / f"test.{style}").write_text("\n".join(test) + "\n")
        swap = dict(zip(words, other))
        (folder / f"reference.{style}").write_text("\n".join(" ".join(swap.get(w, w) for w in t.split()) for t in test) + "\n")
    return folder


@pytest.fixture(scope="session")
def transfer_run(style_folder, tmp_path_factory):
    """A tiny style-transfer run: its folder (model exported to run/model)."""
    from textgan.recipes import style_transfer

    out = tmp_path_factory.mktemp("transfer") / "run"
    style_transfer.main(style_transfer.StyleTransferConfig(
        data=str(style_folder), out_dir=str(out), d_model=32, n_layers=1, n_heads=2, steps=100, warmup_steps=80,
        lr=3e-3, batch_size=16, eval_every=50, eval_sentences=8, checkpoint_every=50, log_every=5, disc_dim=16))
    return out
