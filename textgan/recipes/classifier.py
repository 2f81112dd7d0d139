"""Train a style classifier: the judge that scores style accuracy of rewrites.

Reads the same folder as the style-transfer recipe (``train.<style>``, ``dev.<style>``) and
trains a CNN sentence classifier on balanced batches. The exported folder
``OUT_DIR/classifier`` is what ``benchmarks/yelp_transfer.py`` and the transfer recipe's
``classifier=`` option load.

    python -m textgan.recipes.classifier data=../shared/data/yelp out_dir=runs/yelp_classifier
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, arg, check_bounds, check_unit_interval, check_vocab_size
from ..data import json_text, step_seed, write_text_atomic
from ..distributed import shard
from ..models.classifier import SentenceClassifier, classify, encode_batch, save_classifier
from ..rl import loss_mean
from ..training import (
    BaseConfig,
    Run,
    adam,
    autocast,
    compile_forward,
    optimizer_step,
    periodic,
    progress,
    resolve_device,
    restore,
    seed_everything,
)


@dataclass
class ClassifierConfig(BaseConfig):
    """Train a CNN style classifier on a folder of train.<style> files."""

    out_dir: str = arg("runs/classifier", "run folder: config, metrics log, checkpoints, exported classifier")
    data: str = arg("", "folder with train.<style> (and dev.<style>) files, one sentence per line")
    normalize: bool = arg(True, "lower-case and split punctuation and clitics, as textgan transfer does")
    vocab_size: int = arg(0, "word vocabulary size; 0: every training word")
    steps: int = arg(1500, "training steps")
    batch_size: int = arg(128, "sentences per step, the same number from each style")
    lr: float = arg(1e-3, "AdamW learning rate")
    weight_decay: float = arg(0.01, "AdamW weight decay")
    dim: int = arg(128, "embedding width")
    filters: int = arg(128, "convolution filters per width")
    dropout: float = arg(0.5, "dropout on embeddings and pooled features")
    max_length: int = arg(64, "longest sentence in tokens; longer ones are cut")
    grad_clip: float = arg(5.0, "gradient-norm clipping")
    log_every: int = arg(50, "steps between metric log lines")
    eval_every: int = arg(500, "steps between dev-set accuracy evaluations")
    print_samples: int = arg(0, "unused (kept for the shared loop)")
    checkpoint_every: int = arg(500, "steps between checkpoints")
    keep_checkpoints: int = arg(2, "checkpoints kept on disk")

    def check(self) -> None:
        super().check()
        if not self.data:
            raise ConfigError("data is required: a folder with train.<style> files, e.g. data=../shared/data/yelp")
        check_bounds(self, positive=("steps", "batch_size", "dim", "filters", "max_length", "log_every", "eval_every",
                                     "checkpoint_every", "lr", "grad_clip"),
                     non_negative=("vocab_size", "keep_checkpoints", "weight_decay"))
        check_unit_interval(self, ("dropout",))
        check_vocab_size(self)


def balanced_batch(data: dict[str, list[str]], styles: list[str], batch_size: int, step: int, seed: int):
    """``batch_size`` sentences drawn evenly over the styles, determined by (seed, step): (texts, label ids)."""
    generator = torch.Generator().manual_seed(step_seed(seed, step))
    per_style = max(1, batch_size // len(styles))
    texts, labels = [], []
    for label, style in enumerate(styles):
        rows = torch.randint(len(data[style]), (per_style,), generator=generator).tolist()
        texts += [data[style][i] for i in rows]
        labels += [label] * per_style
    return texts, torch.tensor(labels)


def accuracy(model, tokenizer, data: dict[str, list[str]], styles: list[str]) -> dict[str, float]:
    """Accuracy per style and overall (mean over styles) on ``data``."""
    out = {}
    for style in styles:
        predicted = classify(model, tokenizer, data[style], styles)
        out[f"eval/acc_{style}"] = sum(p == style for p in predicted) / max(len(predicted), 1)
    out["eval/accuracy"] = sum(out[f"eval/acc_{s}"] for s in styles) / len(styles)
    return out


def main(config: ClassifierConfig) -> dict:
    import time

    from ..tokenization import build_word_tokenizer
    from ..transfer import load_style_data

    run = Run(config)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data = load_style_data(config.data, normalized=config.normalize, seed=config.seed)
    styles = data.styles
    tokenizer = build_word_tokenizer([s for style in styles for s in data.train[style]], config.vocab_size or None)
    model = SentenceClassifier(len(tokenizer), len(styles), tokenizer.pad_token_id, dim=config.dim,
                               filters=config.filters, dropout=config.dropout).to(device)
    optimizer = adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    compile_forward(model, config)
    modules, optimizers = {"classifier": model}, {"classifier": optimizer}
    run.keep_tokenizer(tokenizer)
    state = restore(run, modules, optimizers, device)
    start = state["step"] if state else 0

    def evaluator():
        return accuracy(model, tokenizer, data.dev, styles), []

    # what checkpoints record of the classifier this run exports, so that a run stopped early can be used as a judge
    extra = {"normalize": config.normalize, "data": config.data}
    export = {"classifier": {"module": "classifier", "labels": styles, "architecture": model.arch, **extra}}

    with progress(config.steps, start, "classifier") as bar:
        for step in range(start, config.steps):
            model.train()
            texts, labels = (shard(part) for part in balanced_batch(data.train, styles, config.batch_size, step, config.seed))
            tokens = encode_batch(tokenizer, texts, model.pad_id, config.max_length).to(device)
            with autocast(config, device):
                loss = loss_mean(torch.nn.functional.cross_entropy(model(tokens), labels.to(device), reduction="none"))
                loss = optimizer_step(loss, optimizer, model, config.grad_clip)
            bar.update(1)
            periodic(run, None, config, step + 1, {"train/loss": loss}, bar, modules, optimizers, {"export": export},
                     last_step=config.steps, evaluator=evaluator)

    if not run.writes:  # under torchrun, rank 0 exports and reports
        return {}
    scores = accuracy(model, tokenizer, data.dev, styles)
    if data.test:
        scores.update({k.replace("eval/", "test/"): v for k, v in accuracy(model, tokenizer, data.test, styles).items()})
    run.log(config.steps, scores)
    extra["dev_accuracy"] = scores["eval/accuracy"]
    out = run.export("classifier", lambda folder: save_classifier(model, tokenizer, styles, folder, extra=extra))
    scores["time/total_s"] = round(time.time() - run.started, 1)
    write_text_atomic(run.dir / "metrics.json", json_text(scores))
    for key, value in scores.items():
        print(f"{key:<24} {value:.4f}")
    print(f"\nclassifier exported to {out}")
    run.close()
    return scores


if __name__ == "__main__":
    from ..distributed import exit_process
    from ._cli import run_recipe

    exit_process(run_recipe(ClassifierConfig, main, "python -m textgan.recipes.classifier"))
