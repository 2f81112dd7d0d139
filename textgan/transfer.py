"""Unpaired style transfer with one causal LM: data, sequence layout, decoding, the model folder.

The rewriter is the core's generator (a ``transformers`` causal LM, by default a small Llama)
reading the source sentence as a prefix and writing the rewrite after it::

    <style:neg> the food was cold . <sep> <style:pos> the food was hot . <eos>

Why a decoder with the source as prefix rather than an encoder-decoder: the rewrite of a
short review sentence mostly copies its source, and a decoder copies by attending to the
prefix as well as an encoder-decoder's cross-attention does; one stack instead of two halves
the parameters at the same width; the model stays a stock causal LM, so the core's KV-cache
sampler, REINFORCE functions, checkpoints and Hugging Face export serve it unchanged, and a
pretrained causal LM can be fine-tuned into a rewriter. Rows of a batch have sources of
different lengths, so prompts are left-padded and the padding is masked out of attention;
with rotary position embeddings a left-padded row computes exactly what it would alone.

The same model generates in a style from nothing: a small share of the training rows
rewrite an empty source into its own style, which is a style-conditioned language model
(``textgan sample --model DIR --style pos``).

Raw text is normalized the way the training data was: lower-cased, punctuation split off,
English clitics split as in the Penn Treebank (``didn't`` -> ``did n't``), which is how the
Yelp and COCO corpora are tokenized; on such corpora it leaves 99.6% of lines unchanged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import sampling
from .bleu import ngram_counts
from .config import check_sentences
from .data import DataError, read_lines, read_text, sequence_mask
from .models.fast_forward import causal_lm_hidden, head_logprobs
from .models.generator import ModelError, load_errors
from .sampling import ROW_MULTIPLE, _decoder, _draw_tokens, encode_prompt, eval_mode, inference, left_pad, sample
from .tokenization import token_ids

SEP = "<sep>"
SPLITS = ("train", "dev", "test")
CONFIG_FILE = "transfer.json"
DISCRIMINATOR_FILE = "discriminator.safetensors"
DECODING = ("greedy", "sample", "beam", "rerank")


def style_token(style: str) -> str:
    return f"<style:{style}>"


class StyleError(ValueError):
    """A style name the model or data set does not know."""


# --------------------------------------------------------------------------- text


_PUNCT = re.compile(r"(\.\.+|[.,!?;:()\"](?=\s|$)|(?<=\s)[(\"]|^[(\"])")
_NEG = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(s|ve|m|re|ll|d)\b")


def normalize(text: str) -> str:
    """Lower-case and split punctuation and clitics: ``"I didn't like it!"`` -> ``"i did n't like it !"``."""
    text = _PUNCT.sub(r" \1 ", text.lower())
    text = _NEG.sub(r"\1 n't", text)
    text = _CLITIC.sub(r"\1 '\2", text)
    return " ".join(text.split())


# --------------------------------------------------------------------------- data


@dataclass
class StyleData:
    """Sentences per split and style; ``references[style]`` are human rewrites of ``test[style]``."""

    styles: list[str]
    train: dict[str, list[str]]
    dev: dict[str, list[str]] = field(default_factory=dict)
    test: dict[str, list[str]] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)


# The sentiment releases of Shen et al. 2017 (shentianxiao/language-style-transfer) and Li et al.
# 2018 (lijuncen/Sentiment-and-Style-Transfer) name their files sentiment.<split>.<label>, with
# label 0 negative and 1 positive, and reference.<label> for the human rewrites of the test set.
RELEASE_STYLES = {"0": "neg", "1": "pos"}
_SPLITS = ("train", "dev", "test", "reference")


def style_files(folder: Path) -> dict[str, dict[str, Path]]:
    """``files[split][style]`` of a style folder, in either layout: ``<split>.<style>`` (ours), or a
    sentiment release's ``sentiment.<split>.<0|1>`` and ``reference.<0|1>`` (styles neg and pos)."""
    files: dict[str, dict[str, Path]] = {split: {} for split in _SPLITS}
    if any(p.is_file() for p in folder.glob("train.*")):
        for split in _SPLITS:
            for path in folder.glob(f"{split}.*"):
                if path.is_file() and path.suffix[1:]:
                    files[split][path.suffix[1:]] = path
        return files
    for label, style in RELEASE_STYLES.items():
        for split in _SPLITS:
            path = folder / (f"reference.{label}" if split == "reference" else f"sentiment.{split}.{label}")
            if path.is_file():
                files[split][style] = path
    return files


def _reference(line: str) -> str:
    """A reference line: Li et al.'s files hold ``source<TAB>human rewrite``; ours the rewrite alone."""
    return line.rsplit("\t", 1)[-1]


def load_style_data(folder: str | Path, *, normalized: bool = True, dev_size: int = 500, seed: int = 0) -> StyleData:
    """Read ``train.<style>`` (and ``dev.<style>``, ``test.<style>``, ``reference.<style>`` when present).

    Styles are the suffixes of the ``train.*`` files; at least two are needed. A folder of
    Shen et al.'s or Li et al.'s Yelp or Amazon release (``sentiment.train.0``, ...,
    ``reference.1``) is read as styles neg (0) and pos (1) (:func:`style_files`). Without a
    ``dev.<style>`` file, ``dev_size`` sentences of that style's training set are held out.
    """
    import random

    if dev_size < 1:  # was taken for "too few sentences to hold out a dev set"
        raise ValueError(f"dev_size must be at least 1, got {dev_size}")
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "no such folder"
        raise DataError(f"{folder}: {what}; give a folder with train.<style> files (e.g. train.neg, train.pos)")
    files = style_files(folder)
    styles = sorted(files["train"])
    if len(styles) < 2:
        raise DataError(f"{folder}: found {len(styles)} train.<style> file(s); at least two styles are needed "
                        "(e.g. train.neg and train.pos, or sentiment.train.0 and sentiment.train.1, one sentence per line)")
    prep = normalize if normalized else str.strip

    def read(path: Path) -> list[str]:
        return [prep(line) for line in read_lines(path)]

    data = StyleData(styles, {s: read(files["train"][s]) for s in styles})
    for style in styles:
        for split in ("dev", "test"):
            if style in files[split]:
                getattr(data, split)[style] = read(files[split][style])
        if style in files["reference"]:  # aligned with test lines, blank lines and all
            text = read_text(files["reference"][style])
            data.references[style] = [prep(_reference(line)) for line in text.splitlines()]
        if style not in data.dev:
            shuffled = data.train[style][:]
            random.Random(seed).shuffle(shuffled)
            n = min(dev_size, len(shuffled) // 10)
            if n < 1:
                raise DataError(f"{files['train'][style]}: too few sentences ({len(shuffled)}) to hold out a dev set; "
                                f"add sentences or a dev.{style} file")
            data.dev[style], data.train[style] = shuffled[:n], shuffled[n:]
    return data


# --------------------------------------------------------------------------- layout


class Layout:
    """Token ids of the layout ``<style:src> source <sep> <style:tgt> target <eos>``."""

    def __init__(self, tokenizer, styles: list[str], max_length: int):
        from .tokenization import special_ids

        self.tokenizer = tokenizer
        self.styles = list(styles)
        self.max_length = max_length
        self.bos_id, self.eos_id, self.pad_id = special_ids(tokenizer)
        self.sep_id = tokenizer.convert_tokens_to_ids(SEP)
        self.style_ids = {s: tokenizer.convert_tokens_to_ids(style_token(s)) for s in self.styles}
        unknown = tokenizer.unk_token_id
        if unknown is not None and (self.sep_id == unknown or unknown in self.style_ids.values()):
            raise ModelError("the tokenizer lacks the <sep> or <style:...> tokens of a style-transfer model")

    def style_id(self, style: str) -> int:
        if style not in self.style_ids:
            raise StyleError(f"unknown style {style!r}; this model knows {', '.join(self.styles)}")
        return self.style_ids[style]

    def encode(self, sentences: list[str]) -> tuple[list[list[int]], int]:
        """Word ids of each sentence, cut to ``max_length``; returns the ids and how many were cut."""
        ids = token_ids(self.tokenizer, list(sentences))
        cut = sum(len(i) > self.max_length for i in ids)
        return [i[: self.max_length] for i in ids], cut

    def prompts(self, sources: list[list[int]], src_styles: list[int], tgt_styles: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``<style:src> source <sep> <style:tgt>``: ids (B, P) and mask (B, P), False on padding."""
        return left_pad([[s, *src, self.sep_id, t] for src, s, t in zip(sources, src_styles, tgt_styles)], self.pad_id)

    def targets(self, sentences: list[list[int]]) -> torch.Tensor:
        """Right-padded ``target <eos>`` rows: (B, T)."""
        width = max(len(s) for s in sentences) + 1
        ids = torch.full((len(sentences), width), self.pad_id, dtype=torch.long)
        for i, tokens in enumerate(sentences):
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            ids[i, len(tokens)] = self.eos_id
        return ids

    def words(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """Rows of generated ids (B, T) back to word-id lists, without end token and padding."""
        mask = sequence_mask(tokens, self.eos_id) if mask is None else mask
        special = {self.eos_id, self.pad_id, self.sep_id, *self.style_ids.values()}
        return [[t for t, m in zip(row, keep) if m and t not in special] for row, keep in zip(tokens.tolist(), mask.tolist())]


def word_tensor(words: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-padded word ids (B, max(1, longest)): the discriminator's input."""
    width = max(1, max((len(w) for w in words), default=1))
    out = torch.full((len(words), width), pad_id, dtype=torch.long)
    for i, w in enumerate(words):
        if w:
            out[i, : len(w)] = torch.tensor(w)
    return out


@torch.no_grad()
def discriminator_logits(disc, words: list[list[int]], pad_id: int) -> torch.Tensor:
    """The discriminator's logits (B, classes) for word-id lists, with dropout off; its mode is restored."""
    with eval_mode(disc):  # callers run mid-training: the recipe's step and its evaluations
        return disc(word_tensor(words, pad_id).to(next(disc.parameters()).device))


def style_reward(disc, words: list[list[int]], classes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log D(class | sentence): (B,), the policy's style reward. classes: (B,) long."""
    logp = F.log_softmax(discriminator_logits(disc, words, pad_id), -1)
    return logp[torch.arange(len(words), device=logp.device), classes.to(logp.device)]


def content_reward(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The cycle log-likelihood per token, log p(x | y) / |x|: (B,), the policy's content reward.

    logprobs, mask: (B, T), the teacher-forced log-probabilities of the source x and its mask.
    """
    return (logprobs * mask).sum(1) / mask.sum(1).clamp_min(1)


def target_logprobs(model, prompt: torch.Tensor, prompt_mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log p(target_t | prompt, target_<t): (B, T).

    The vocabulary projection runs on the target positions only (not over the source).
    """
    ids = torch.cat([prompt, targets], dim=1)
    key_mask = torch.cat([prompt_mask, torch.ones_like(targets, dtype=torch.bool)], dim=1)
    P, T = prompt.shape[1], targets.shape[1]
    hidden = causal_lm_hidden(model, ids, key_mask)[:, P - 1 : P + T - 1]
    return head_logprobs(model, hidden, targets)


# --------------------------------------------------------------------------- decoding


@inference
def greedy(model, prompt: torch.Tensor, prompt_mask: torch.Tensor, max_new: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """The most likely token at each step: (B, T) ids, padding after each row's end token.

    Rows that have ended leave the decoder on a CPU, as in sampling (:func:`textgan.sampling.sample`)."""
    logits, step, reorder = _decoder(model, prompt, max_new, True, prompt_mask)
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    tokens, _ = _draw_tokens(logits, step, finished, max_new, eos_id, pad_id, 1.0, 0, 1.0, reorder, greedy=True)
    return tokens


@inference
def beam_search(model, prompt: torch.Tensor, prompt_mask: torch.Tensor, max_new: int, eos_id: int, pad_id: int,
                beam: int = 4, length_penalty: float = 1.0, n_best: bool = False, token_bias: torch.Tensor | None = None):
    """Beam search; hypotheses ranked by log-probability / length**length_penalty.

    ``token_bias`` (B, V), optional, is added to each unfinished hypothesis's next-token
    log-probabilities when the beam chooses which hypotheses to keep, but not to their scores:
    it steers the search (e.g. toward the source's words, for minimal edits) without changing
    what a hypothesis is worth. Returns the best hypothesis of each row, (B, T) ids; with
    ``n_best``, all ``beam`` final hypotheses and their ranking scores: ((B, K, T) ids, (B, K) scores).
    """
    B, K, device = prompt.shape[0], beam, prompt.device
    prompt, prompt_mask = prompt.repeat_interleave(K, 0), prompt_mask.repeat_interleave(K, 0)
    logits, step, reorder = _decoder(model, prompt, max_new, True, prompt_mask)
    if reorder is None:
        raise ModelError("beam search needs a Llama-architecture model; use --decoding greedy or sample")
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    searched = scores.clone()  # what the beam ranks by: scores plus the token bias collected so far
    lengths = torch.zeros(B, K, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    history = torch.full((B, K, max_new), pad_id, dtype=torch.long, device=device)
    # the sources the decoder holds, K rows each, in its order. On a CPU a source whose hypotheses have
    # all ended leaves it (they would only grow padding); kept rows stay a multiple of ROW_MULTIPLE, so
    # their logits, and the search, are bitwise those of the whole batch (see sampling._rows_to_keep)
    held = torch.arange(B, device=device)
    multiple = ROW_MULTIPLE // math.gcd(K, ROW_MULTIPLE) if device.type == "cpu" else 0
    for t in range(max_new):
        logp = F.log_softmax(logits.float(), -1).view(len(held), K, -1)  # (held, K, V)
        V = logp.shape[-1]
        # a finished hypothesis continues with padding at no cost, and only with padding
        done = torch.full_like(logp[0, 0], float("-inf"))
        done[pad_id] = 0.0
        ended = finished[held]
        logp = torch.where(ended[..., None], done, logp)
        total = (scores[held][..., None] + logp).view(len(held), K * V)
        if token_bias is None:
            top, flat = total.topk(K, dim=1)  # (held, K)
        else:
            steer = torch.where(ended[..., None], 0.0, token_bias[held][:, None, :].to(logp.dtype))
            steered, flat = (searched[held][..., None] + logp + steer).view(len(held), K * V).topk(K, dim=1)
            searched[held] = steered
            top = total.gather(1, flat)
        parent, token = flat // V, flat % V
        scores[held] = top
        history[held, :, :t] = history[held, :, :t].gather(1, parent[..., None].expand(-1, -1, t))
        history[held, :, t] = token
        was_finished = ended.gather(1, parent)
        lengths[held] = lengths[held].gather(1, parent) + (~was_finished).float()
        finished[held] = was_finished | (token == eos_id)
        if bool(finished.all()) or t + 1 == max_new:
            history = history[:, :, : t + 1]
            break
        index = parent + torch.arange(len(held), device=device)[:, None] * K  # (held, K) decoder rows
        keep = sampling._rows_to_keep(finished[held].all(1), None, multiple=multiple, least=1) if multiple else None
        if keep is not None:
            held, index, token = held[keep], index[keep], token[keep]
        reorder(index.view(-1))
        logits = step(token.view(-1))
    ranked = scores / lengths.clamp_min(1.0) ** length_penalty  # (B, K)
    if n_best:
        return history, ranked
    return history[torch.arange(B), ranked.argmax(1)]


def overlap(hypothesis: list[int], source: list[int]) -> float:
    """How much of ``source`` a rewrite keeps, in [0, 1]: the mean of the unigram and bigram F1
    between the two word-id lists (clipped counts; an order with no n-grams on either side adds 0).

    Rerank decoding's optional minimal-edit term: human rewrites of a sentence's style change a
    few words and keep the rest, which the cycle likelihood log p(x | y) rewards only indirectly.
    """
    total = 0.0
    for hyp, src in zip(ngram_counts(hypothesis, 2), ngram_counts(source, 2)):
        matched = sum((hyp & src).values())
        if matched:
            total += 2 * matched / (sum(hyp.values()) + sum(src.values()))  # F1 = 2 m / (|hyp| + |src|)
    return total / 2


def rerank_choice(terms: dict[str, torch.Tensor], style_weight: float, content_weight: float,
                  allow_copy: bool = False, overlap_weight: float = 0.0, lm_style_weight: float = 0.0) -> torch.Tensor:
    """Rerank decoding's pick per row, (B,): the argmax over the K hypotheses of forward +
    ``style_weight`` * style + ``content_weight`` * content + ``overlap_weight`` * overlap +
    ``lm_style_weight`` * lm_style, ``terms`` as :meth:`Rewriter.candidates` returns them ((B, K) each).

    Unless ``allow_copy``, a hypothesis equal to its source (``terms["copy"]``) is passed over
    whenever the row has any other: a rewrite has to change something. Without this rule the
    content term, which a copy maximizes, pulls copies in as its weight grows.
    """
    score = terms["forward"] + style_weight * terms["style"] + content_weight * terms["content"]
    if overlap_weight:
        score = score + overlap_weight * terms["overlap"]
    if lm_style_weight:
        score = score + lm_style_weight * terms["lm_style"]
    if not allow_copy:
        copy = terms["copy"] & ~terms["copy"].all(1, keepdim=True)
        score = score.masked_fill(copy.to(score.device), float("-inf"))
    return score.argmax(1).cpu()


# --------------------------------------------------------------------------- the model


def _check_call(sentences=(), *, beam: int = 1, batch_size: int = 1) -> None:
    """A TypeError for one string given in place of the sentences (each character would be rewritten as a sentence),
    a ValueError for a beam or batch size under 1 (they failed deep inside with a reshape error)."""
    check_sentences(sentences)
    if beam < 1 or batch_size < 1:
        raise ValueError(f"beam and batch_size must be at least 1, got beam={beam}, batch_size={batch_size}")


class Rewriter:
    """A trained style-transfer model: the causal LM, its tokenizer, the styles and the text policy.

    ``discriminator`` (optional) is the run's style adversary, a
    :class:`~textgan.models.classifier.SentenceClassifier` over the same vocabulary whose classes
    are the styles plus "rewrite". With it, ``decoding="rerank"`` picks among the beam's
    hypotheses the one that maximizes the training objective: log p(y | x) per token plus the
    reward the policy was trained on, ``style_weight`` * log D(target | y) + ``content_weight``
    * (log p(x | y) per token, the cycle reconstruction), plus an optional minimal-edit term
    ``overlap_weight`` * :func:`overlap` (y, x) and an optional second style judgment
    ``lm_style_weight`` * (log p(y | target-style LM) - log p(y | source-style LM) per token, the
    model's own style LMs: the rewrite of an empty source) (both 0 unless set), passing over copies
    of the source unless ``allow_copy`` (see :func:`rerank_choice`). ``copy_bias`` > 0 steers rerank's beam
    toward the source's words, so that its n-best holds more minimal edits (see :meth:`candidates`).
    """

    def __init__(self, model, tokenizer, styles: list[str], max_length: int, normalized: bool = True,
                 discriminator=None, style_weight: float = 1.0, content_weight: float = 1.0, allow_copy: bool = False,
                 overlap_weight: float = 0.0, copy_bias: float = 0.0, lm_style_weight: float = 0.0):
        self.model = model
        self.tokenizer = tokenizer
        self.layout = Layout(tokenizer, styles, max_length)
        self.normalized = normalized
        self.discriminator = discriminator
        self.set_rerank(style_weight=style_weight, content_weight=content_weight, allow_copy=allow_copy,
                        overlap_weight=overlap_weight, copy_bias=copy_bias, lm_style_weight=lm_style_weight)

    def set_rerank(self, *, style_weight: float | None = None, content_weight: float | None = None,
                   allow_copy: bool | None = None, overlap_weight: float | None = None,
                   copy_bias: float | None = None, lm_style_weight: float | None = None) -> None:
        """Override rerank decoding's settings (None keeps the model's own); weights and the copy
        bias must be finite and non-negative (ValueError otherwise)."""
        weights = (("style_weight", style_weight), ("content_weight", content_weight), ("overlap_weight", overlap_weight),
                   ("copy_bias", copy_bias), ("lm_style_weight", lm_style_weight))
        for name, value in weights:
            if value is not None:
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{name} must be a finite number >= 0, got {value}")
                setattr(self, name, float(value))
        if allow_copy is not None:
            self.allow_copy = bool(allow_copy)

    @property
    def styles(self) -> list[str]:
        return self.layout.styles

    def info(self) -> dict:
        """What ``transfer.json`` holds: the styles, the text policy and, with a discriminator, its
        architecture and rerank weights (checkpoints of the recipe record it too)."""
        info = {"styles": self.styles, "max_length": self.layout.max_length, "normalize": self.normalized,
                "layout": f"<style:SRC> source {SEP} <style:TGT> target <eos>"}
        if self.discriminator is not None:
            info["discriminator"] = {"architecture": self.discriminator.arch, "classes": [*self.styles, "rewrite"],
                                     "style_weight": self.style_weight, "content_weight": self.content_weight,
                                     "overlap_weight": self.overlap_weight, "copy_bias": self.copy_bias,
                                     "lm_style_weight": self.lm_style_weight}
        return info

    def save(self, out_dir: str | Path) -> Path:
        """Hugging Face folder of the LM and tokenizer, plus ``transfer.json``."""
        from .models.generator import export_generator

        out_dir = export_generator(self.model, self.tokenizer, out_dir)
        info = self.info()
        if self.discriminator is not None:
            from .models.classifier import save_weights

            save_weights(self.discriminator, out_dir / DISCRIMINATOR_FILE)
        else:
            (out_dir / DISCRIMINATOR_FILE).unlink(missing_ok=True)  # never pair a new model with an old adversary
        (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        return out_dir

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> Rewriter:
        """The model a style_transfer run exported (``path``: the run folder or its ``model`` folder), or,
        for a run that has not exported yet (stopped early, or still training), the one it would
        export, rebuilt from its newest intact checkpoint (or ``path``, a checkpoint folder)."""
        from .models.generator import load_generator, looks_like_a_path, model_folder, run_checkpoints

        if not str(path).strip():
            raise ModelError("no model was named (an empty path); give a style_transfer run folder or its 'model' "
                             "folder")
        path = Path(model_folder(str(path)))
        if path.is_file() or (not path.expanduser().exists() and looks_like_a_path(str(path))):
            what = "is a file" if path.is_file() else "no such folder"
            raise ModelError(f"{path}: {what}; give a style_transfer run folder or its 'model' folder "
                             "(python -m textgan.recipes.style_transfer)")
        if path.is_dir() and not (path / CONFIG_FILE).is_file():
            checkpoints = run_checkpoints(path)
            if checkpoints:
                return cls._from_checkpoint(checkpoints, device, trust_remote_code)
            raise ModelError(f"{path} is not a style-transfer model (no {CONFIG_FILE}); "
                             "give a style_transfer run folder or its 'model' folder")
        model, tokenizer = load_generator(str(path), trust_remote_code=trust_remote_code)
        reading = CONFIG_FILE
        try:
            info = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            reading = DISCRIMINATOR_FILE if "discriminator" in info else CONFIG_FILE
            return cls._from_parts(model, tokenizer, info, path / DISCRIMINATOR_FILE, device)
        except load_errors() as e:
            raise ModelError(f"{path}: {reading} is damaged or missing ({type(e).__name__}); re-export the model") from None

    @classmethod
    def _from_checkpoint(cls, checkpoints: list[Path], device, trust_remote_code: bool) -> Rewriter:
        from .models.generator import generator_from_checkpoint, read_run_checkpoint

        checkpoint, tensors, meta = read_run_checkpoint(checkpoints)
        export = meta.get("export") or {}
        if "transfer" not in export:
            raise ModelError(f"{checkpoint.parent.parent} is not a style_transfer run (or its checkpoint is of an older "
                             "textgan: run its command again with resume=true to finish and export it)")
        model, tokenizer = generator_from_checkpoint(checkpoint, tensors, meta, trust_remote_code=trust_remote_code)
        prefix = f"model/{export.get('discriminator', 'discriminator')}/"
        disc = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            return cls._from_parts(model, tokenizer, export["transfer"], disc, device)
        except load_errors() as e:
            raise ModelError(f"{checkpoint}: cannot rebuild the run's model from it ({type(e).__name__}); run its "
                             "command again with resume=true to finish and export it") from None

    @classmethod
    def _from_parts(cls, model, tokenizer, info: dict, disc_weights, device) -> Rewriter:
        """A Rewriter from its LM, tokenizer, ``transfer.json`` dict and the discriminator's weights (a
        file or tensors; used where ``info`` names a discriminator)."""
        disc, weights = None, {}
        if "discriminator" in info:
            from .models.classifier import build_classifier

            disc = build_classifier(info["discriminator"]["architecture"], disc_weights).to(device).eval()
            weights = {k: float(info["discriminator"][k]) for k in ("style_weight", "content_weight")}
            for key in ("overlap_weight", "copy_bias", "lm_style_weight"):  # newer keys
                weights[key] = float(info["discriminator"].get(key, 0.0))
        return cls(model.to(device).eval(), tokenizer, list(info["styles"]), int(info["max_length"]),
                   bool(info.get("normalize", True)), disc, **weights)

    def count_too_long(self, sentences: list[str]) -> int:
        """How many of ``sentences`` (after normalization) exceed ``max_length`` tokens and will be cut."""
        texts = [normalize(s) if self.normalized else s.strip() for s in sentences]
        return self.layout.encode([t for t in texts if t])[1]

    def rewrite(self, sentences: list[str], source: str, target: str, *, decoding: str = "greedy", beam: int = 4,
                temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 128, seed: int = 0,
                progress: bool = False) -> list[str]:
        """Rewrite each sentence from style ``source`` into ``target``; an empty line gives an empty line.

        Sentences longer than the model's ``max_length`` are cut to it (the caller is told how many).
        """
        if decoding not in DECODING:
            raise ValueError(f"decoding must be one of {', '.join(DECODING)}, got {decoding!r}")
        _check_call(sentences, beam=beam, batch_size=batch_size)
        src, tgt = self.layout.style_id(source), self.layout.style_id(target)
        outputs = [""] * len(sentences)
        device = next(self.model.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for rows, ids, unknowns in self._batches(sentences, batch_size, progress, f"{source} -> {target}"):
                words = self.generate(ids, [src] * len(rows), [tgt] * len(rows), decoding=decoding, beam=beam,
                                      temperature=temperature, top_p=top_p)
                for i, text in zip(rows, self.decode(words, unknowns)):
                    outputs[i] = text
        return outputs

    def rewrite_candidates(self, sentences: list[str], source: str, target: str, *, beam: int = 4, copy_bias: float = 0.0,
                           lm_style: bool = True, batch_size: int = 128,
                           progress: bool = False) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
        """Every sentence's beam n-best as text, with the terms rerank decoding weighs (see :meth:`candidates`).

        Returns (texts, terms): ``texts[i]`` holds sentence i's K rewrites; each of ``terms``' tensors
        is (N, K). Reranking with weights (a, b, c, d) picks ``argmax(forward + a * style + b * content
        + c * overlap + d * lm_style)`` per row (:func:`rerank_choice`), so a sweep over weights costs
        one beam search. ``lm_style=False`` skips the lm_style term (zeros) when no d > 0 will be tried.
        Empty lines get K empty rewrites.
        """
        _check_call(sentences, beam=beam, batch_size=batch_size)
        src, tgt = self.layout.style_id(source), self.layout.style_id(target)
        texts = [[""] * beam for _ in sentences]
        terms = {name: torch.zeros(len(sentences), beam) for name in ("forward", "style", "content", "overlap", "lm_style")}
        terms["copy"] = torch.zeros(len(sentences), beam, dtype=torch.bool)
        for rows, ids, unknowns in self._batches(sentences, batch_size, progress, f"{source} -> {target}"):
            words, batch_terms = self.candidates(ids, [src] * len(rows), [tgt] * len(rows), beam, copy_bias, lm_style)
            K = len(words) // len(rows)
            decoded = self.decode(words, [u for u in unknowns for _ in range(K)])
            for j, i in enumerate(rows):
                texts[i] = decoded[j * K : (j + 1) * K]
                for name, value in batch_terms.items():
                    terms[name][i, :K] = value[j].cpu()
        return texts, terms

    def _batches(self, sentences: list[str], batch_size: int, progress: bool, desc: str):
        """(line indices, word ids, unknown words) per batch of the non-empty lines, shortest first:
        sorting by length keeps left padding short."""
        from tqdm.auto import tqdm

        texts = [normalize(s) if self.normalized else s.strip() for s in sentences]
        todo = sorted((i for i, t in enumerate(texts) if t), key=lambda i: len(texts[i].split()))
        self.model.eval()
        for start in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress, leave=False):
            rows = todo[start : start + batch_size]
            ids, _ = self.layout.encode([texts[i] for i in rows])
            yield rows, ids, [self.unknown_words(texts[i]) for i in rows]

    def generate(self, sources: list[list[int]], src_styles: list[int], tgt_styles: list[int], *, decoding: str = "greedy",
                 beam: int = 4, temperature: float = 1.0, top_p: float = 1.0) -> list[list[int]]:
        """Word ids of the rewrites of ``sources`` (word-id lists), one batch."""
        if decoding == "rerank":
            return self._rerank(sources, src_styles, tgt_styles, beam)
        device = next(self.model.parameters()).device
        prompt, mask = self.layout.prompts(sources, src_styles, tgt_styles)
        prompt, mask = prompt.to(device), mask.to(device)
        max_new = self.layout.max_length + 1
        eos, pad = self.layout.eos_id, self.layout.pad_id
        if decoding == "greedy":
            tokens = greedy(self.model, prompt, mask, max_new, eos, pad)
        elif decoding == "beam":
            tokens = beam_search(self.model, prompt, mask, max_new, eos, pad, beam=beam)
        else:
            tokens = sample(self.model, prompt, max_new, eos_id=eos, pad_id=pad, temperature=temperature, top_p=top_p,
                            prompt_mask=mask).tokens
        return self.layout.words(tokens.cpu())

    @torch.no_grad()
    def candidates(self, sources: list[list[int]], src_styles: list[int], tgt_styles: list[int], beam: int = 4,
                   copy_bias: float = 0.0, lm_style: bool = True) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        """The beam's n-best rewrites of each source and the terms rerank decoding weighs.

        ``copy_bias`` > 0 steers the beam toward the source's words: it is added to their
        log-probabilities when the beam chooses hypotheses, not to the scores reported here
        (see :func:`beam_search`'s ``token_bias``), so the n-best holds more minimal edits.

        Returns (words, terms): ``words`` holds B * K word-id lists, hypothesis k of row b at
        b * K + k; ``terms`` maps "forward" (log p(y|x) per token), "style" (log D(target | y)),
        "content" (log p(x|y) per token), "overlap" (:func:`overlap` of y and x) and "lm_style"
        (:meth:`style_lm_logprob` of y in the target style minus in the source style; zeros when
        ``lm_style`` is False, which saves its two forward passes) to (B, K) float tensors, and
        "copy" (y is x) to a (B, K) bool tensor.
        """
        if self.discriminator is None:
            raise ModelError("rerank decoding needs the run's discriminator (discriminator.safetensors), which this "
                             "model folder lacks; use --decoding beam or greedy")
        layout = self.layout
        device = next(self.model.parameters()).device
        prompt, mask = layout.prompts(sources, src_styles, tgt_styles)
        bias = None
        if copy_bias:
            bias = torch.zeros(len(sources), self.model.config.vocab_size, device=device)
            for row, source in zip(bias, sources):
                row[torch.tensor(source, dtype=torch.long, device=device)] = copy_bias
        history, forward = beam_search(self.model, prompt.to(device), mask.to(device), layout.max_length + 1,
                                       layout.eos_id, layout.pad_id, beam=beam, n_best=True, token_bias=bias)
        B, K, T = history.shape
        words = layout.words(history.view(B * K, T).cpu())

        def each(rows: list) -> list:  # every row once per hypothesis
            return [r for r in rows for _ in range(K)]

        class_of = {layout.style_ids[s]: i for i, s in enumerate(layout.styles)}
        target_class = torch.tensor([class_of[t] for t in each(tgt_styles)])
        style = style_reward(self.discriminator, words, target_class, layout.pad_id).to(device)
        back, back_mask = layout.prompts(words, each(tgt_styles), each(src_styles))
        repeated = each(sources)
        targets = layout.targets(repeated).to(device)
        cycle = target_logprobs(self.model, back.to(device), back_mask.to(device), targets).float()
        content = content_reward(cycle, sequence_mask(targets, layout.eos_id))  # as in training
        copy = torch.tensor([y == x for y, x in zip(words, repeated)]).view(B, K)
        kept = torch.tensor([overlap(y, x) for y, x in zip(words, repeated)], device=device).view(B, K)
        ratio = torch.zeros(B, K, device=device)
        if lm_style:
            ratio = (self.style_lm_logprob(words, each(tgt_styles)) - self.style_lm_logprob(words, each(src_styles))).view(B, K)
        return words, {"forward": forward.float(), "style": style.view(B, K), "content": content.view(B, K),
                       "overlap": kept, "lm_style": ratio, "copy": copy}

    @torch.no_grad()
    def style_lm_logprob(self, sentences: list[list[int]], styles: list[int]) -> torch.Tensor:
        """log p(y | style) per token, (B,): each word-id list y scored as the rewrite of an empty
        source into its style (layout style ids), the style LM that the recipe's ``lm_fraction``
        of self-reconstruction rows trains and :meth:`sample` draws from."""
        layout = self.layout
        device = next(self.model.parameters()).device
        prompt, mask = layout.prompts([[]] * len(sentences), styles, styles)
        targets = layout.targets(sentences).to(device)
        logprobs = target_logprobs(self.model, prompt.to(device), mask.to(device), targets).float()
        return content_reward(logprobs, sequence_mask(targets, layout.eos_id))

    def _rerank(self, sources, src_styles, tgt_styles, beam: int) -> list[list[int]]:
        """The beam hypothesis of each row with the highest log p(y|x)/|y| + reward (see the class)."""
        words, terms = self.candidates(sources, src_styles, tgt_styles, beam, self.copy_bias, bool(self.lm_style_weight))
        best = rerank_choice(terms, self.style_weight, self.content_weight, self.allow_copy, self.overlap_weight,
                             self.lm_style_weight)
        K = terms["forward"].shape[1]
        return [words[b * K + int(k)] for b, k in enumerate(best)]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that the tokenizer maps to ``<unk>``, in order."""
        unk = self.tokenizer.unk_token_id
        if unk is None:
            return []
        words = text.split()
        ids = token_ids(self.tokenizer, words)
        return [w for w, i in zip(words, ids) if unk in i]

    def decode(self, words: list[list[int]], unknowns: list[list[str]] | None = None) -> list[str]:
        """Text of word-id lists. With ``unknowns`` (per row, the source's unknown words), each ``<unk>``
        of an output is replaced in order by one of them (Luong et al. 2015), so rare names survive."""
        unk = self.tokenizer.unk_token_id
        texts = []
        for i, row in enumerate(words):
            spare = list(unknowns[i]) if unknowns is not None and unk in row else []
            pieces, run = [], []
            for t in row:
                if t == unk and spare:
                    pieces += [self.tokenizer.decode(run, skip_special_tokens=True), spare.pop(0)]
                    run = []
                else:
                    run.append(t)
            pieces.append(self.tokenizer.decode(run, skip_special_tokens=True))
            texts.append(" ".join(" ".join(pieces).split()))
        return texts

    def sample(self, style: str, n: int, *, prompt: str = "", temperature: float = 1.0, top_p: float = 1.0,
               batch_size: int = 256, seed: int = 0, progress: bool = False) -> list[str]:
        """``n`` new sentences in ``style``: the rewrite of an empty source into that style, each
        continuing ``prompt`` (normalized as the training text was) when one is given."""
        from tqdm.auto import tqdm

        if n < 0:
            raise ValueError(f"n must be zero or more, got {n}")
        _check_call(batch_size=batch_size)
        s = self.layout.style_id(style)
        text = normalize(prompt) if self.normalized and prompt.strip() else prompt
        prefix = encode_prompt(self.tokenizer, text, self.layout.max_length)
        out: list[str] = []
        device = next(self.model.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for start in tqdm(range(0, n, batch_size), desc=f"sampling {style}", disable=not progress, leave=False):
                rows = min(batch_size, n - start)
                # the style's layout for an empty source, then the prompt's words, as if the model had written them
                ids, mask = self.layout.prompts([[]] * rows, [s] * rows, [s] * rows)
                ids = torch.cat([ids, torch.tensor([prefix] * rows, dtype=torch.long)], 1)
                mask = torch.cat([mask, torch.ones(rows, len(prefix), dtype=torch.bool)], 1)
                rollout = sample(self.model, ids.to(device), self.layout.max_length + 1 - len(prefix),
                                 eos_id=self.layout.eos_id, pad_id=self.layout.pad_id, temperature=temperature,
                                 top_p=top_p, prompt_mask=mask.to(device))
                out.extend(self.decode([prefix + row for row in self.layout.words(rollout.tokens.cpu())]))
        return out
