"""A sentence classifier over word ids: the style judge and the style discriminator.

Kim's (2014) CNN: token embeddings, convolutions of several widths, max-over-time pooling,
dropout and a linear layer to one logit per class. It is fast on a CPU, strong on sentiment,
and needs no pretrained weights. The style-transfer recipe uses it twice: as the adversary
(classes: each style plus "rewrite"), and, trained alone by ``textgan.recipes.classifier``,
as the judge of style accuracy in evaluation.

A saved classifier is a folder: ``model.safetensors`` (weights), ``classifier.json``
(architecture and labels) and the tokenizer files, so nothing is unpickled when it loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..config import check_sentences
from ..tokenization import token_ids
from .generator import ModelError, export_folder, load_errors, model_folder, run_checkpoints

CONFIG_FILE = "classifier.json"


class SentenceClassifier(nn.Module):
    """tokens (B, T) long, padding ``pad_id`` -> logits (B, n_classes)."""

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int, *, dim: int = 128, filters: int = 128,
                 widths: tuple[int, ...] = (1, 2, 3, 4, 5), dropout: float = 0.3):
        super().__init__()
        self.pad_id = pad_id
        self.widths = tuple(widths)
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w - 1) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(filters * len(self.widths), n_classes)
        self.arch = {"vocab_size": vocab_size, "n_classes": n_classes, "pad_id": pad_id, "dim": dim,
                     "filters": filters, "widths": list(self.widths), "dropout": dropout}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        real = tokens != self.pad_id  # (B, T)
        x = self.dropout(self.embedding(tokens)).transpose(1, 2)  # (B, D, T)
        pooled = []
        for conv, width in zip(self.convs, self.widths):
            h = torch.relu(conv(x))[:, :, : tokens.shape[1] + width - 1]  # (B, F, T + w - 1)
            # a window position counts if it overlaps a real token
            valid = nn.functional.max_pool1d(nn.functional.pad(real.float()[:, None], (width - 1, width - 1)), width, 1)
            pooled.append(h.masked_fill(valid[:, :, : h.shape[2]] == 0, 0.0).amax(dim=2))
        return self.head(self.dropout(torch.cat(pooled, dim=1))).float()  # fp32 logits under bf16 autocast too


def save_weights(model: nn.Module, path: str | Path) -> None:
    """The module's weights as a safetensors file (nothing to unpickle when it loads)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def build_classifier(architecture: dict, weights: str | Path | dict[str, torch.Tensor]) -> SentenceClassifier:
    """A classifier from its saved ``arch`` dict and its weights: a safetensors file, or the tensors."""
    from safetensors.torch import load_file

    arch = dict(architecture)
    arch["widths"] = tuple(arch["widths"])
    model = SentenceClassifier(arch.pop("vocab_size"), arch.pop("n_classes"), arch.pop("pad_id"), **arch)
    model.load_state_dict(weights if isinstance(weights, dict) else load_file(str(weights)))
    return model


def save_classifier(model: SentenceClassifier, tokenizer, labels: list[str], out_dir: str | Path,
                    extra: dict | None = None) -> Path:
    """Write the weights (safetensors), ``classifier.json`` and the tokenizer into ``out_dir``."""
    out_dir = export_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, out_dir / "model.safetensors")
    tokenizer.save_pretrained(out_dir)
    (out_dir / CONFIG_FILE).write_text(json.dumps({"labels": labels, "architecture": model.arch, **(extra or {})},
                                                  indent=2), encoding="utf-8")
    return out_dir


def load_classifier(path: str | Path, device: str | torch.device = "cpu"):
    """Load a saved classifier folder, or a classifier run folder: the classifier it exported, or, where it has
    exported none yet (it stopped early, or is still training), the one of its newest intact checkpoint (a
    checkpoint folder picks the step). Returns (model in eval mode, tokenizer, info dict with ``labels``)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(model_folder(str(path), names=("classifier",), marker=CONFIG_FILE))  # a run folder: its classifier
    if not path.is_dir():
        what = "is a file" if path.exists() else "no such folder"
        raise ModelError(f"{path}: {what}; give a classifier run folder or its 'classifier' folder "
                         "(python -m textgan.recipes.classifier)")
    if not (path / CONFIG_FILE).is_file():
        checkpoints = run_checkpoints(path)
        if checkpoints and _records_classifier(checkpoints[0]):
            return _checkpoint_classifier(checkpoints, device)
    if not (path / CONFIG_FILE).is_file() or not (path / "model.safetensors").is_file():
        raise ModelError(f"{path} is not a textgan classifier (it lacks {CONFIG_FILE} or model.safetensors); "
                         "train one with python -m textgan.recipes.classifier")
    try:
        info = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        model = build_classifier(info["architecture"], path / "model.safetensors")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    except load_errors() as e:
        raise ModelError(f"cannot load the classifier in {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return model.to(device).eval(), tokenizer, info


def _records_classifier(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` records the classifier its run exports, as a classifier run's do (a style-transfer
    or generator run's record their own model). A checkpoint that records none, a classifier run's of an
    earlier textgan, is an error that says to finish the run."""
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # damaged: read_run_checkpoint passes it over, with a warning
        return True
    if "export" not in state:  # an earlier textgan's classifier run
        raise ModelError(f"{checkpoint.parent.parent}: a run that has not exported its classifier yet, and whose "
                         "checkpoints do not record it; run its command again with resume=true to finish and export it")
    return "classifier" in state["export"]


def _checkpoint_classifier(checkpoints: list[Path], device):
    """(model, tokenizer, info) of the classifier a run exports when it ends, rebuilt from the first intact one of
    ``checkpoints``, with the run's tokenizer. Says on stderr which step it loads."""

    from .generator import read_run_checkpoint, run_tokenizer, say_checkpoint

    checkpoint, tensors, meta = read_run_checkpoint(checkpoints)
    info = dict((meta.get("export") or {}).get("classifier") or {})
    run_dir = checkpoint.parent.parent
    if not info:
        raise ModelError(f"{run_dir} is not a textgan classifier run; train one with python -m textgan.recipes.classifier")
    prefix = f"model/{info.pop('module', 'classifier')}/"
    try:
        model = build_classifier(info["architecture"], {k[len(prefix):]: v for k, v in tensors.items()
                                                        if k.startswith(prefix)})
    except load_errors() as e:
        raise ModelError(f"{checkpoint}: cannot rebuild the run's classifier from it ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); run its command again with resume=true to "
                         "finish and export it") from None
    # a missing or damaged tokenizer gets its own one-line error there
    tokenizer = run_tokenizer(run_dir, started_from=None, trust_remote_code=False)
    say_checkpoint(run_dir, meta["step"], model_folder(str(run_dir), names=("classifier",), marker=CONFIG_FILE),
                   "classifier")
    return model.to(device).eval(), tokenizer, info


def encode_batch(tokenizer, sentences: list[str], pad_id: int, max_length: int = 64) -> torch.Tensor:
    """Word ids without special tokens, right-padded: (B, T), T >= 1; longer sentences are cut."""
    ids = token_ids(tokenizer, sentences)
    width = max(1, min(max_length, max((len(i) for i in ids), default=1)))
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for row, tokens in enumerate(ids):
        tokens = tokens[:width]
        if tokens:
            out[row, : len(tokens)] = torch.tensor(tokens)
    return out


@torch.no_grad()
def classify(model: SentenceClassifier, tokenizer, sentences: list[str], labels: list[str],
             batch_size: int = 512) -> list[str]:
    """The predicted label of each sentence; ``labels``: the name of each of the model's classes, in order (the
    ``labels`` of :func:`load_classifier`'s info)."""
    from ..sampling import eval_mode

    check_sentences(sentences)
    check_sentences(labels, "labels", items="class names")  # a string gave its characters as labels
    if len(labels) != model.arch["n_classes"]:  # fewer gave an IndexError, more named classes it has not got
        raise ValueError(f"labels must name the model's {model.arch['n_classes']} classes, got {len(labels)}: {labels}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    predicted = []
    with eval_mode(model):
        for start in range(0, len(sentences), batch_size):
            tokens = encode_batch(tokenizer, sentences[start : start + batch_size], model.pad_id).to(device)
            predicted.extend(labels[i] for i in model(tokens).argmax(-1).tolist())
    return predicted
