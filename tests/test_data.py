import pytest
import torch
from conftest import shared_data

from textgan import hub
from textgan.data import DataError, batch_at, encode, load_corpus, read_lines, sequence_mask
from textgan.tokenization import special_ids


def test_read_lines_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_lines(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="directory"):
        read_lines(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="no sentences"):
        read_lines(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no sentences"):
        read_lines(blank)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff\xfe broken\n")
    with pytest.raises(DataError, match="UTF-8"):
        read_lines(bad)


def test_windows_files_read_like_any_other(tmp_path):
    """A byte-order mark (Notepad's UTF-8) and CRLF line ends: the same lines, no stray first-word character."""
    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbfa man riding a bike .\r\na dog on a couch .\r\n")
    assert read_lines(windows) == ["a man riding a bike .", "a dog on a couch ."]


def test_text_file_split_is_deterministic(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"sentence number {i}" for i in range(100)) + "\n\n")
    a = load_corpus(str(path), valid_fraction=0.1, seed=3)
    b = load_corpus(str(path), valid_fraction=0.1, seed=3)
    c = load_corpus(str(path), valid_fraction=0.1, seed=4)
    assert a.train == b.train and a.valid == b.valid
    assert a.valid != c.valid
    assert len(a.valid) == 10 and len(a.train) == 90
    assert not set(a.train) & set(a.valid)
    assert a.grammar is None


def test_grammar_corpus():
    corpus = load_corpus("grammar", grammar_sentences=200, valid_fraction=0.1, seed=0)
    assert len(corpus.train) == 200 and len(corpus.valid) == 20
    assert corpus.grammar is not None
    assert corpus.train == load_corpus("grammar", grammar_sentences=200, seed=0).train


def test_encode_and_mask(word_tokenizer):
    bos, eos, pad = special_ids(word_tokenizer)
    ids, dropped = encode(["a man", "a b c d e f g h"], word_tokenizer, max_length=4)
    assert dropped == 1
    assert ids.shape == (1, 6)
    assert ids[0, 0] == bos and ids[0, 3] == eos and ids[0, 4] == pad
    mask = sequence_mask(ids[:, 1:], eos)
    assert mask.tolist() == [[True, True, True, False, False]]


def test_encode_lays_out_every_row_as_bos_words_eos_padding():
    import random

    from textgan.tokenization import build_word_tokenizer

    rng = random.Random(0)
    sentences = [" ".join(rng.choice("abcdefg") for _ in range(rng.randint(0, 9))) for _ in range(300)]
    tokenizer = build_word_tokenizer(sentences)
    bos, eos, pad = special_ids(tokenizer)
    ids, dropped = encode(sentences, tokenizer, max_length=6)
    kept = [s.split() for s in sentences if 0 < len(s.split()) <= 6]
    assert dropped == len(sentences) - len(kept) > 0 and ids.shape == (len(kept), 8)
    for row, words in zip(ids.tolist(), kept):
        assert row == [bos, *tokenizer.convert_tokens_to_ids(words), eos] + [pad] * (6 - len(words))
    assert encode([], tokenizer, max_length=6)[0].shape == (0, 8)


def test_batches_are_reproducible(word_tokenizer, sentences):
    ids, _ = encode(sentences, word_tokenizer, max_length=20)
    _, eos, _ = special_ids(word_tokenizer)
    a = batch_at(ids, 16, step=5, seed=0, eos_id=eos)
    assert torch.equal(a, batch_at(ids, 16, step=5, seed=0, eos_id=eos))
    assert not torch.equal(a, batch_at(ids, 16, step=6, seed=0, eos_id=eos))
    assert (a == eos).any(dim=1).all()  # trimming keeps every end token


def test_coco_loads_from_shared_data():
    train = shared_data("coco", "train.txt")
    corpus = load_corpus(str(train), valid_source=str(shared_data("coco", "test.txt")))
    assert 9_999 <= len(corpus.train) <= 10_000 and 9_999 <= len(corpus.valid) <= 10_000


def test_hf_dataset_from_a_local_folder(tmp_path):
    """data=hf:FOLDER goes through `datasets.load_dataset`, offline, with any text column."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = [f"sentence number {i} ." for i in range(40)]
    (folder / "train.csv").write_text("review,stars\n" + "".join(f"{r},{i % 5}\n" for i, r in enumerate(rows)) + " ,1\n")
    corpus = load_corpus(f"hf:{folder}", hf_text_column="review", valid_fraction=0.25)
    assert sorted(corpus.train + corpus.valid) == sorted(rows)  # the blank row is dropped
    with pytest.raises(DataError, match="no column 'text'.*review"):
        load_corpus(f"hf:{folder}")
    with pytest.raises(DataError, match="cannot load the Hugging Face dataset.*split 'test'"):
        load_corpus(f"hf:{folder}", hf_split="test", hf_text_column="review")


def test_hf_dataset_failures_are_one_clean_error(monkeypatch):
    """Whatever `datasets` raises (no network, unknown name), the user gets a DataError."""
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(hub, "reachable", lambda: True)  # the hub answers, then the load fails
    with pytest.raises(DataError, match="cannot load the Hugging Face dataset 'someone/corpus'.*Couldn't reach"):
        load_corpus("hf:someone/corpus")


def test_hf_dataset_with_no_hub_in_reach_reads_the_cache_only(monkeypatch):
    """No hub: datasets runs in its offline mode for the call (no retries), and the flags are restored."""
    import datasets
    import huggingface_hub.constants

    seen = {}

    def load_dataset(*args, **kwargs):
        seen["offline"] = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (OfflineModeIsEnabled)")

    before = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "reachable", lambda: False)
    with pytest.raises(DataError, match="'someone/corpus': the hub cannot be reached and it is not in the local cache"):
        load_corpus("hf:someone/corpus")
    assert seen["offline"] == (True, True)
    assert (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE) == before


def test_a_grammar_corpus_of_no_sentences_is_refused():
    """grammar_sentences=0 gave an empty training set beside a validation sentence."""
    with pytest.raises(DataError, match="grammar_sentences must be at least 1, got 0"):
        load_corpus("grammar", grammar_sentences=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_a_valid_fraction_outside_0_and_1_is_refused(fraction):
    """valid_fraction=1.5 held out 30,000 grammar sentences from 20,000 and was accepted; the recipes' config check
    refused it, load_corpus called from Python did not."""
    with pytest.raises(DataError, match=f"valid_fraction must be between 0 and 1, got {fraction}"):
        load_corpus("grammar", grammar_sentences=10, valid_fraction=fraction)
