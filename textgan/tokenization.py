"""Tokenizers built with the ``tokenizers`` library, wrapped as ``PreTrainedTokenizerFast``.

Three kinds, all saved as a standard ``tokenizer.json`` that ``AutoTokenizer`` loads:

- ``word``: one token per whitespace-separated word, for pre-tokenized corpora (COCO, Yelp,
  the embedded grammar).
- ``bpe``: byte-pair encoding over whitespace-split words.
- ``unigram``: a SentencePiece unigram model trained with ``sentencepiece`` and converted
  into a ``tokenizers`` Unigram model (so one format serves every kind).

Every tokenizer has the special tokens ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>`` and adds
``<bos>`` in front when a caller asks for special tokens (as ``pipeline`` does), so a prompt
looks to the generator like the start of a training sentence.

Decoding keeps the space in front of every word, the first one included (as GPT-2's byte-level
decoder does for text that starts with a space): ``decode(ids[:k]) + decode(ids[k:]) ==
decode(ids)`` for every k, so text decoded from new tokens alone, as the ``text-generation``
pipeline decodes a continuation, joins its prompt with a space ("a man" + " riding ...", not
"a manriding ..."). A whole sentence therefore decodes with one leading space; textgan's own
outputs strip it.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .config import check_sentences

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
TOKENIZER_KINDS = ("word", "bpe", "unigram")


def _wrap(tokenizer: Tokenizer):
    """Add the BOS post-processor and wrap as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def token_ids(tokenizer, sentences: list[str]) -> list[list[int]]:
    """The ids of each sentence, without special tokens: ``tokenizer(sentences,
    add_special_tokens=False)["input_ids"]``, taken straight from the ``tokenizers`` backend where the
    tokenizer has one that neither truncates nor pads, without the transformers wrapper's work for
    each sentence (attention masks, offsets, a dict per row)."""
    if not sentences:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(sentences, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers >= 0.21: no offsets
    return [encoding.ids for encoding in encode(sentences, add_special_tokens=False)]


def build_word_tokenizer(sentences: Iterable[str], vocab_size: int | None = None, min_frequency: int = 1):
    """Word-level tokenizer: the ``vocab_size`` most frequent words (all, if None); ``vocab_size`` counts the
    special tokens."""
    check_sentences(sentences)
    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be more than the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    counts = Counter(word for sentence in sentences for word in sentence.split())
    if not counts:  # a tokenizer of the special tokens alone, every word <unk>
        raise ValueError("no words to build a vocabulary from: the sentences are empty or blank")
    words = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if c >= min_frequency]
    if vocab_size is not None:
        words = words[: max(0, vocab_size - len(SPECIAL_TOKENS))]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.Replace(Regex("^"), " ")  # a space in front of every word (module docstring)
    return _wrap(tokenizer)


def build_bpe_tokenizer(sentences: Iterable[str], vocab_size: int = 8000):
    """Byte-pair encoding over whitespace-split words; word starts are marked with ``▁``."""
    check_sentences(sentences)
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")  # keeps the first word's space
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    return _wrap(tokenizer)


def build_unigram_tokenizer(sentences: Iterable[str], vocab_size: int = 8000):
    """SentencePiece unigram model, trained by ``sentencepiece``, converted to ``tokenizers``."""
    check_sentences(sentences)
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "corpus.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            f.writelines(sentence.strip() + "\n" for sentence in sentences)
        try:
            spm.SentencePieceTrainer.train(
                input=text_path, model_prefix=os.path.join(tmp, "sp"), model_type="unigram",
                vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
                pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_piece=UNK, minloglevel=2,
            )
        except RuntimeError as e:  # sentencepiece's own checks, e.g. a vocabulary smaller than the alphabet
            from .data import DataError

            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"sentencepiece could not train a unigram vocabulary of {vocab_size} pieces on this text "
                            f"({reason}); raise vocab_size") from None
        processor = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "sp.model"))
        vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK), byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")  # keeps the first word's space
    return _wrap(tokenizer)


def build_tokenizer(kind: str, sentences: list[str], vocab_size: int | None = None):
    """Build a tokenizer of ``kind`` (one of :data:`TOKENIZER_KINDS`) on ``sentences``."""
    if kind == "word":
        return build_word_tokenizer(sentences, vocab_size)
    if kind == "bpe":
        return build_bpe_tokenizer(sentences, vocab_size or 8000)
    if kind == "unigram":
        return build_unigram_tokenizer(sentences, vocab_size or 8000)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def load_run_tokenizer(folder):
    """The tokenizer a run saved in ``folder`` (resume trains on the vocabulary its checkpoints were
    trained with); a damaged one is a one-line ModelError."""
    from transformers import PreTrainedTokenizerFast

    from .models.generator import ModelError, load_errors

    try:
        return PreTrainedTokenizerFast.from_pretrained(folder)
    except load_errors() as e:
        raise ModelError(f"{folder}: the run's tokenizer is damaged ({type(e).__name__}); resume needs it to match "
                         "its checkpoints, so start a new run in a fresh out_dir") from None


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad) ids of any tokenizer; falls back to EOS where one is missing (GPT-2)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        from .models.generator import ModelError  # a ValueError; the commands print it as one line

        raise ModelError("the tokenizer has no end-of-sequence token, which textgan needs to end samples; set "
                         "eos_token in the model folder's tokenizer_config.json (or special_tokens_map.json)")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad
