import pytest
from transformers import AutoTokenizer

from textgan.tokenization import SPECIAL_TOKENS, build_tokenizer, special_ids


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_tokenizer_roundtrip_and_save(kind, sentences, tmp_path):
    tokenizer = build_tokenizer(kind, sentences, vocab_size=None if kind == "word" else 200)
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) is not None
    bos, eos, pad = special_ids(tokenizer)
    assert len({bos, eos, pad}) == 3
    text = sentences[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == " " + text  # every word keeps the space in front of it
    assert tokenizer(text)["input_ids"][0] == bos  # special tokens on: BOS in front
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.eos_token == "<eos>" and loaded.pad_token == "<pad>"


def test_word_tokenizer_vocab_and_unknown(sentences):
    tokenizer = build_tokenizer("word", sentences, vocab_size=20)
    assert len(tokenizer) == 20
    ids = tokenizer("zzz-unseen a", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.unk_token_id


def test_subword_tokenizers_split_unseen_words(sentences):
    tokenizer = build_tokenizer("bpe", sentences, vocab_size=200)
    ids = tokenizer("giraffes riding", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == " giraffes riding"


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_decoding_a_continuation_keeps_its_space(kind, sentences, tmp_path):
    """The text-generation pipeline decodes a continuation's tokens alone and appends them to the
    prompt: every split of a sentence must decode to pieces that join into the whole."""
    tokenizer = build_tokenizer(kind, sentences, vocab_size=None if kind == "word" else 200)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in sentences[:20]:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        whole = loaded.decode(ids)
        assert whole.strip() == text
        for k in range(1, len(ids)):
            assert loaded.decode(ids[:k]) + loaded.decode(ids[k:]) == whole, (text, k)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        build_tokenizer("chars", ["a b"])


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_one_string_in_place_of_the_sentences_is_refused(kind):
    """Iterated, a string trained a vocabulary of its characters without a word of warning."""
    with pytest.raises(TypeError, match="got one str; wrap it in a list"):
        build_tokenizer(kind, "a man rides a bike", vocab_size=20)


def test_a_word_vocabulary_without_room_for_a_word_is_refused():
    """vocab_size up to the 4 special tokens, or sentences without a word, built a tokenizer of the special tokens
    alone, which reads every word as <unk>."""
    from textgan.tokenization import build_word_tokenizer

    with pytest.raises(ValueError, match="vocab_size must be more than the 4 special tokens, got 4"):
        build_word_tokenizer(["a man rides a bike"], vocab_size=4)
    with pytest.raises(ValueError, match="no words to build a vocabulary from"):
        build_word_tokenizer(["", "  "])
    assert len(build_word_tokenizer(["a man rides a bike"], vocab_size=5)) == 5


def test_unigram_vocabulary_too_small_is_a_data_error():
    """sentencepiece refuses a vocabulary smaller than what it must hold; the message says to raise vocab_size."""
    from textgan.data import DataError

    with pytest.raises(DataError, match="raise vocab_size"):
        build_tokenizer("unigram", ["a man riding a bike .", "a dog on a couch ."] * 20, vocab_size=3)


def test_token_ids_equal_the_wrappers_ids(sentences, tmp_path):
    """token_ids reads the tokenizers backend directly; it must give what the transformers call gives, for
    textgan's three kinds (with added special tokens, as style transfer adds), a GPT-2 byte-level BPE,
    unknown words, odd spacing and an empty line, and fall back to the call where the backend truncates."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    from textgan.tokenization import token_ids

    texts = [*sentences[:50], "a zebra  flying\tover <style:pos> the moon", "", "  spaces   everywhere  "]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=300, special_tokens=["<|endoftext|>"])
    bpe.save(str(tmp_path / "bpe.json"))
    gpt2 = GPT2TokenizerFast(tokenizer_file=str(tmp_path / "bpe.json"), eos_token="<|endoftext|>")
    tokenizers = [build_tokenizer(kind, sentences, vocab_size=None if kind == "word" else 200)
                  for kind in ("word", "bpe", "unigram")] + [gpt2]
    tokenizers[0].add_special_tokens({"additional_special_tokens": ["<sep>", "<style:neg>", "<style:pos>"]})
    for tokenizer in tokenizers:
        assert token_ids(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]
    truncating = build_tokenizer("word", sentences)
    truncating.backend_tokenizer.enable_truncation(3)
    assert token_ids(truncating, texts) == truncating(texts, add_special_tokens=False)["input_ids"]
    assert token_ids(tokenizers[0], []) == []
