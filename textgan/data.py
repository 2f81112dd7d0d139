"""Corpora: the embedded grammar, local text files, or a Hugging Face dataset; batches of ids.

A corpus is a list of training sentences and a list of validation sentences. Files hold one
sentence per line. Splitting and shuffling are deterministic for a given seed, and batches are
drawn by ``(seed, step)`` so that a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hub
from .grammar import Grammar


class DataError(ValueError):
    """A corpus could not be read; the message says what to do."""


@dataclass
class Corpus:
    train: list[str]
    valid: list[str]
    grammar: Grammar | None = None  # the true distribution, when the corpus was sampled from one


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside ``path``, then rename it into place. A write that fails (a full
    disk) leaves ``path`` as it was and no temporary file, and raises an OSError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None  # the file meant, not its temporary
    os.replace(tmp, path)


def json_text(value, indent: int | None = 2) -> str:
    """``value`` as JSON text and a newline, with a float that is not finite (NLL-oracle where no sample could be
    scored: inf; a diverged loss: nan) written as null: JSON has no inf or nan, and Python's ``Infinity`` and
    ``NaN`` break other readers (jq, JavaScript)."""
    def plain(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(value), indent=indent) + "\n"


def decode_utf8(raw: bytes, name: str | Path) -> str:
    """``raw`` as UTF-8 text, without the byte-order mark some editors write first; a DataError
    naming ``name`` (a file, standard input) if it is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not valid UTF-8 (byte {e.start}); re-encode it as UTF-8") from None


def sample_blocks(lines: list[str]) -> list[tuple[int | None, list[str]]]:
    """A run's ``samples.txt`` as (step, sentences) blocks: each evaluation's samples follow a
    ``# step N`` line. Lines before the first such line form a block of step None (a file of
    plain samples is one such block)."""
    import re

    blocks: list[tuple[int | None, list[str]]] = [(None, [])]
    for line in lines:
        header = re.fullmatch(r"# step (\d+)", line)
        if header:
            blocks.append((int(header.group(1)), []))
        else:
            blocks[-1][1].append(line)
    return blocks if blocks[0][1] else blocks[1:]


def argument_text(value: str, name: str) -> str:
    """A command-line argument used as text, checked: Python hands bytes that are not UTF-8 on as
    lone surrogates, which tokenizers reject with a TypeError; a one-line DataError instead."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{name} is not valid UTF-8; give it as UTF-8 text") from None
    return value


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file; a one-line DataError for a missing file, a directory or bad UTF-8."""
    if not str(path).strip():  # Path("") is the current folder
        raise DataError("no file was named (an empty path); give a text file with one sentence per line")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; give a text file with one sentence per line")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a text file with one sentence per line")
    return decode_utf8(path.read_bytes(), path)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file."""
    lines = [line.strip() for line in read_text(path).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: no sentences (the file is empty or blank); give one sentence per line")
    return lines


def _hf_lines(name: str, split: str, column: str) -> list[str]:
    import datasets
    from datasets.exceptions import DatasetsError

    config = None
    if ":" in name:
        name, config = name.split(":", 1)
    cache_only = hub.cache_only(name)  # then at once from the local cache, not after a minute of retries
    try:
        with hub.offline() if cache_only else contextlib.nullcontext():
            dataset = datasets.load_dataset(name, config, split=split)
    except (OSError, ValueError, DatasetsError) as e:  # network, unknown name or split, unreadable files
        if cache_only:
            raise DataError(f"cannot load the Hugging Face dataset {name!r}: the hub cannot be reached and it is not "
                            "in the local cache; use a local text file or dataset folder, or connect and try again") from None
        reason = (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__).rstrip(".")
        raise DataError(f"cannot load the Hugging Face dataset {name!r} (split {split!r}): {reason}. Check the name "
                        "and hf_split, or use a local text file or dataset folder") from None
    if column not in dataset.column_names:
        raise DataError(f"dataset {name} has no column {column!r}; set hf_text_column to one of {dataset.column_names}")
    return [str(t).strip() for t in dataset[column] if str(t).strip()]


def load_corpus(
    source: str = "grammar",
    *,
    valid_source: str = "",
    hf_split: str = "train",
    hf_text_column: str = "text",
    grammar_sentences: int = 20000,
    valid_fraction: float = 0.05,
    seed: int = 0,
) -> Corpus:
    """Load a corpus.

    Args:
        source: ``grammar`` (the embedded caption grammar), a path to a text file, or
            ``hf:NAME`` / ``hf:NAME:CONFIG`` for a Hugging Face dataset: a hub name (needs the
            network) or a local folder of csv / json / parquet / txt files.
        valid_source: a separate validation file; if empty, ``valid_fraction`` of the
            training sentences (shuffled by ``seed``) are held out.
        grammar_sentences: how many sentences to sample from the grammar.
    """
    if not 0 < valid_fraction < 1:  # 1.5 held out more sentences than there were, and left none to train on
        raise DataError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    grammar = None
    if source == "grammar":
        if grammar_sentences < 1:
            raise DataError(f"grammar_sentences must be at least 1, got {grammar_sentences}")
        grammar = Grammar.default()
        # Training and validation sentences come from independent seeds of the same grammar.
        train = grammar.sample_corpus(grammar_sentences, seed=seed)
        n_valid = max(1, round(grammar_sentences * valid_fraction))
        valid = grammar.sample_corpus(n_valid, seed=seed + 1_000_003)
        return Corpus(train, valid, grammar)
    lines = _hf_lines(source[3:], hf_split, hf_text_column) if source.startswith("hf:") else read_lines(source)
    if valid_source:
        return Corpus(lines, read_lines(valid_source))
    shuffled = lines[:]
    random.Random(seed).shuffle(shuffled)
    n_valid = round(len(shuffled) * valid_fraction)
    if len(shuffled) < 2 or n_valid < 1:
        raise DataError(f"{source}: too few sentences ({len(lines)}) to hold out a validation set; add sentences or give valid_file")
    return Corpus(shuffled[n_valid:], shuffled[:n_valid])


def encode(sentences: list[str], tokenizer, max_length: int) -> tuple[torch.Tensor, int]:
    """Token ids ``[bos, w1 .. wn, eos, pad ..]`` of shape (N, max_length + 2).

    Sentences longer than ``max_length`` tokens are dropped. Returns the ids and how many
    sentences were dropped.
    """
    from .tokenization import special_ids, token_ids

    bos, eos, pad = special_ids(tokenizer)
    encoded = token_ids(tokenizer, sentences)
    kept = [ids for ids in encoded if 0 < len(ids) <= max_length]
    ids = torch.full((len(kept), max_length + 2), pad, dtype=torch.long)
    lengths = torch.tensor([len(tokens) for tokens in kept], dtype=torch.long)
    ids[:, 0] = bos
    words = torch.arange(1, max_length + 2)[None, :] <= lengths[:, None]  # (N, max_length + 1), row by row
    ids[:, 1:][words] = torch.tensor([token for tokens in kept for token in tokens], dtype=torch.long)
    ids[torch.arange(len(kept)), lengths + 1] = eos
    return ids, len(sentences) - len(kept)


def sequence_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True up to and including the first ``eos_id`` of each row. ids: (B, T) -> (B, T) bool."""
    is_eos = ids == eos_id
    before_eos = torch.cumsum(is_eos.long(), dim=1) - is_eos.long() == 0
    return before_eos


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s random draws (batches, noise), one per (run seed, step).

    Every recipe draws its batches from a generator seeded here rather than from a running
    stream, so a resumed run draws exactly what an uninterrupted one would have.
    """
    return seed * 1_000_003 + step


def batch_at(ids: torch.Tensor, batch_size: int, step: int, seed: int, eos_id: int | None = None) -> torch.Tensor:
    """A random batch determined by ``(seed, step)``, so a resumed run draws the same batches.

    ids are ``[bos, tokens.., eos, pad..]`` rows; with ``eos_id``, the columns after the
    longest row's end are cut off. ids: (N, L) -> (B, L') with L' <= L.
    """
    generator = torch.Generator().manual_seed(step_seed(seed, step))
    batch = ids[torch.randint(len(ids), (batch_size,), generator=generator)]
    if eos_id is not None:
        length = int(sequence_mask(batch[:, 1:], eos_id).sum(dim=1).max())
        batch = batch[:, : length + 1]
    return batch
