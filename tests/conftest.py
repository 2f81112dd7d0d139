import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("TEXTGAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


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
