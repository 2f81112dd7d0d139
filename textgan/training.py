"""What every recipe shares: the common config fields, the run folder, data and model set-up,
evaluation and the final report. Each recipe's own training loop stays in its file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from . import distributed, metrics
from .checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    check_not_in_use,
    list_checkpoints,
    load_checkpoint,
    lock_folder,
    write_folder_atomic,
    writing,
)
from .config import (
    ConfigError,
    arg,
    check_bounds,
    check_choice,
    check_heads,
    check_types,
    check_unit_interval,
    check_vocab_size,
    parse_betas,
    to_dict,
)
from .data import Corpus, encode, json_text, load_corpus, sample_blocks, sequence_mask, write_text_atomic
from .losses import DISC_OBJECTIVES, mle_loss
from .models.classifier import CONFIG_FILE as CLASSIFIER_FILE
from .models.generator import build_generator, load_generator, scored_logprobs, token_logprobs
from .rl import BASELINE_KINDS
from .sampling import bf16_sampling, eval_mode, sample_texts
from .tokenization import TOKENIZER_KINDS, build_tokenizer, load_run_tokenizer, special_ids
from .transfer import CONFIG_FILE as TRANSFER_FILE

PRECISIONS = ("fp32", "bf16")
SAMPLE_PRECISION = arg("fp32", "fp32, or bf16 with precision=bf16: the training steps sample with bf16 q/k/v and MLP "
                           "projections (faster from d_model 256 on CPUs with AMX; opt-in, see README)")


def check_sample_precision(config) -> None:
    """Raise a ConfigError unless ``sample_precision`` is fp32, or bf16 under ``precision=bf16``."""
    check_choice("sample_precision", config.sample_precision, PRECISIONS)
    if config.sample_precision == "bf16" and config.precision != "bf16":
        raise ConfigError("sample_precision=bf16 needs precision=bf16: bf16 sampling runs under the training steps' "
                          "bfloat16 autocast")


@dataclass
class BaseConfig:
    """Fields every recipe has: where it writes, how it resumes, its seed and device."""

    out_dir: str = arg("runs/textgan", "run folder: config, metrics log, checkpoints, samples, exported generator")
    resume: bool = arg(False, "continue from the newest checkpoint in out_dir")
    seed: int = arg(0, "random seed for data, initialisation and sampling")
    device: str = arg("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = arg("fp32", "fp32, or bf16: training forward passes under bfloat16 autocast (helps larger models "
                                 "on CPUs with AMX and on recent GPUs; see README)")
    compile: bool = arg(False, "compile the model's training forward with torch.compile (seconds of start-up; see README)")

    def check(self) -> None:
        check_types(self)  # a config made in Python; one parsed from a command line has its types already
        if not self.out_dir.strip():  # `out_dir=$OUT` with OUT unset: not a wish to write into this folder
            raise ConfigError("out_dir is empty; name the run folder, e.g. out_dir=runs/NAME (out_dir=. for this one)")
        check_choice("precision", self.precision, PRECISIONS)


@dataclass
class RunConfig(BaseConfig):
    """Fields shared by the generator recipes."""

    data: str = arg("grammar", "'grammar' (embedded caption grammar), a text file (one sentence per line), or hf:NAME[:CONFIG]")
    valid_file: str = arg("", "separate validation file; empty: hold out valid_fraction of the training data")
    hf_split: str = arg("train", "split of a Hugging Face dataset (data=hf:...)")
    hf_text_column: str = arg("text", "text column of a Hugging Face dataset (data=hf:...)")
    grammar_sentences: int = arg(20000, "training sentences sampled from the grammar (data=grammar)")
    valid_fraction: float = arg(0.05, "fraction held out for validation")
    max_length: int = arg(20, "longest sentence in tokens (longer training sentences are dropped); samples stop here")
    tokenizer: str = arg("word", "word, bpe or unigram (ignored with model=..., which brings its own)")
    vocab_size: int = arg(0, "tokenizer vocabulary size; 0: every word (word) or 8000 (bpe, unigram)")
    model: str = arg("", "pretrained causal LM (folder, textgan run folder or hub name) to use as the generator; empty: "
                     "a new small Llama")
    trust_remote_code: bool = arg(False, "allow a model folder to run its own code (only for folders you trust)")
    d_model: int = arg(128, "generator width (new model)")
    n_layers: int = arg(2, "generator layers (new model)")
    n_heads: int = arg(4, "generator attention heads (new model)")
    d_ff: int = arg(0, "generator MLP width; 0: 4 * d_model")
    batch_size: int = arg(64, "sentences per step")
    log_every: int = arg(25, "steps between metric log lines")
    eval_every: int = arg(500, "steps between evaluations (samples, NLL, diversity)")
    eval_samples: int = arg(1000, "samples drawn for each evaluation")
    print_samples: int = arg(3, "samples printed at each evaluation")
    checkpoint_every: int = arg(500, "steps between checkpoints")
    keep_checkpoints: int = arg(3, "checkpoints kept on disk")
    temperature: float = arg(1.0, "sampling temperature for evaluation samples")

    def check(self) -> None:
        super().check()
        check_bounds(self, positive=("batch_size", "max_length", "d_model", "n_layers", "n_heads", "log_every",
                                     "eval_every", "eval_samples", "checkpoint_every", "grammar_sentences"),
                     non_negative=("vocab_size", "d_ff", "print_samples", "keep_checkpoints"))
        check_heads(self)
        check_vocab_size(self)
        if not self.data.strip():
            raise ConfigError("data is empty; give data=grammar (the embedded corpus), a text file with one sentence "
                              "per line, or hf:NAME")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.valid_fraction < 1:
            raise ConfigError(f"valid_fraction must be between 0 and 1, got {self.valid_fraction}")
        check_choice("tokenizer", self.tokenizer, TOKENIZER_KINDS)


@dataclass
class GANConfig(RunConfig):
    """Fields shared by the adversarial recipes (each recipe sets its own defaults)."""

    pretrain_steps: int = arg(0, "MLE steps for the generator before adversarial training")
    steps: int = arg(100, "adversarial steps (one generator update each)")
    gen_lr: float = arg(1e-4, "generator Adam learning rate in adversarial steps")
    mle_lr: float = arg(2e-3, "generator learning rate in MLE pretraining steps")
    disc_lr: float = arg(1e-3, "discriminator Adam learning rate")
    betas: str = arg("0.9,0.999", "Adam betas of the adversarial optimizers")
    disc_steps: int = arg(1, "discriminator updates per generator update")
    baseline: str = arg("ema", "policy-gradient baseline: ema, batch_mean, leave_one_out, none")
    disc_dim: int = arg(128, "discriminator width")
    disc_dropout: float = arg(0.1, "discriminator dropout")
    disc_weight_decay: float = arg(0.0, "discriminator weight decay (AdamW)")
    spectral_norm: bool = arg(False, "spectral normalisation on the discriminator's linear and conv layers")
    disc_objective: str = arg("bce", "discriminator loss: bce, hinge, lsgan")
    grad_clip: float = arg(1.0, "gradient-norm clipping for both players")
    gen_average: float = arg(0.0, "decay of a moving average of G's weights, which is evaluated and exported in "
                             "place of the last weights (GAN weight averaging, e.g. 0.99; one more copy of G in "
                             "memory); 0: off")
    gen_lr_decay: float = arg(0.0, "fraction of the adversarial steps, at the end, over which G's learning rate "
                              "falls linearly towards 0, so that training ends on small steps; 0: constant")
    sample_precision: str = SAMPLE_PRECISION

    def check(self) -> None:
        super().check()
        check_bounds(self, positive=("gen_lr", "mle_lr", "disc_lr", "disc_steps", "disc_dim", "grad_clip"),
                     non_negative=("steps", "pretrain_steps", "disc_weight_decay"))
        check_unit_interval(self, ("disc_dropout", "gen_average"))
        check_unit_interval(self, ("gen_lr_decay",), closed=True)
        check_choice("baseline", self.baseline, BASELINE_KINDS)
        check_choice("disc_objective", self.disc_objective, DISC_OBJECTIVES)
        parse_betas(self.betas)
        check_sample_precision(self)


@contextlib.contextmanager
def autocast(config: BaseConfig, device: torch.device):
    """The context the training steps run in: bfloat16 autocast for ``precision=bf16``, else nothing.

    Under it, matmuls and convolutions run in bfloat16 while parameters, optimizer state, log-softmax
    and the losses stay in fp32 (``token_logprobs`` upcasts the logits). Sampling turns autocast off
    and runs in fp32, unless the config has ``sample_precision=bf16`` (or ``textgan.sampling.BF16_SAMPLING``
    is set): then its q/k/v and MLP projections run in bf16 (:func:`textgan.sampling.matmul_dtype`).
    """
    bf16 = getattr(config, "sample_precision", "fp32") == "bf16"  # recipes that sample while training have the key
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"), \
            (bf16_sampling() if bf16 else contextlib.nullcontext()):
        yield


def compile_forward(module: torch.nn.Module, config: BaseConfig) -> torch.nn.Module:
    """With ``compile=true``, compile ``module``'s forward in place (``nn.Module.compile``).

    In place, so parameter names, checkpoints and exports are unchanged; only calls to this
    module's own forward go through the compiled graph (the KV-cache sampler calls the layers
    directly and stays eager). Shapes that vary between batches cause a recompile or two before
    torch switches to dynamic shapes.
    """
    if config.compile:
        if _loses_onednn(module) and distributed.is_main():
            print("note: compile=true runs torch's own fp32 matrix products, which on this CPU take twice as long as "
                  "the oneDNN ones the eager forward uses (README: On an AMD EPYC); leave compile off here",
                  file=sys.stderr)
        module.compile()
    return module


def _loses_onednn(module: torch.nn.Module) -> bool:
    """Whether compiling ``module`` gives up textgan's oneDNN products: an fp32 Llama model on a CPU where
    :mod:`textgan.models.onednn` is active (a compiled model keeps the Hugging Face forward)."""
    from .models import onednn

    config, weight = getattr(module, "config", None), next(module.parameters(), None)
    return (getattr(config, "model_type", "") == "llama" and weight is not None and onednn.applies(weight.detach()))


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), kept as a copy of
    the model that can be sampled, evaluated and exported like the model itself.

    A GAN's generator chases a moving discriminator, so its weights circle around good settings
    instead of settling; their average is often the better generator (Yazici et al. 2019, "The
    unusual effectiveness of averaging in GAN training"). The decay is warmed up as in
    ``tf.train.ExponentialMovingAverage`` — ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates — so the average does not remember the random initialisation for long. Buffers
    are copied, not averaged. The copy is a module: put it in a recipe's checkpoint modules and
    it survives a resume (set :attr:`updates` to the number of updates made before it).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, live in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(live.detach().to(average.dtype), 1 - decay)
        for average, live in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(live)


def generator_average(config: GANConfig, setup: Setup, modules: dict) -> tuple[WeightAverage | None, Setup]:
    """With ``gen_average``: a :class:`WeightAverage` of the generator, registered in ``modules`` so
    that checkpoints carry it, and the Setup to evaluate and export (the average's). Without it:
    ``(None, setup)``. Call before :func:`restore`; after it, set ``average.updates`` to the number of
    updates the restored run made (the recipes update once per step: the restored step)."""
    import dataclasses

    if not config.gen_average:
        return None, setup
    average = WeightAverage(setup.generator, config.gen_average)
    modules["generator_average"] = average.model
    return average, dataclasses.replace(setup, generator=average.model)


def resolve_device(name: str, option: str = "device=") -> torch.device:
    """The device named in a config (or by a command's ``option``, e.g. ``"--device "``, which the
    error messages quote); under torchrun on GPUs, this process's GPU."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option}{name} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option}{name}: textgan runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}{name}: no GPU is visible; use {option}cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{option}{name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return distributed.local_device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _log_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


# The folders a run exports its model to, each with a file it always writes: generator/ (GAN and MLE recipes,
# export_generator's config.json), model/ (style_transfer, Rewriter.save) and classifier/ (save_classifier).
EXPORTS = {"generator": "config.json", "model": TRANSFER_FILE, "classifier": CLASSIFIER_FILE}


def run_config(path: str | Path) -> dict | None:
    """The resolved config of the textgan run that ``path`` is or lies in (a run folder, its samples
    file, its exported generator folder), read from the run's ``config.yaml``; None for anything
    else: a plain model folder, a hub name, a folder whose config.yaml is not a textgan run's."""
    path = Path(path).expanduser()
    for folder in (path, path.parent) if path.name else (path,):
        try:
            saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(saved, dict) and {"out_dir", "resume", "seed", "precision"} <= saved.keys():
            return saved
    return None


def trained_on_grammar(path: str | Path) -> bool:
    """Whether ``path`` belongs to a textgan run on the embedded grammar (see :func:`run_config`)."""
    return (run_config(path) or {}).get("data") == "grammar"


def grammar_run_valid(path: str | Path) -> list[str] | None:
    """The held-out sentences of the run that ``path`` belongs to, where it trained on the embedded
    grammar (the sentences its final evaluation measured NLL on); None otherwise."""
    saved = run_config(path)
    if not saved or saved.get("data") != "grammar":
        return None
    return load_corpus("grammar", grammar_sentences=saved.get("grammar_sentences", 20000),
                       valid_fraction=saved.get("valid_fraction", 0.05), seed=saved.get("seed", 0)).valid


def _in_use(folder: Path, owner: str) -> ConfigError:
    return ConfigError(f"out_dir={folder} is in use by another run{f' (process {owner})' if owner else ''}, which is "
                       "writing its checkpoints and logs there; wait for it to end or stop it (a second run would "
                       "overwrite them), or choose another out_dir")


class Run:
    """The run folder and its logs. Under torchrun only rank 0 writes; other ranks' writes are no-ops.

    Making a Run only checks that ``out_dir`` can be written. What it changes in the folder waits for
    :meth:`start`, which :func:`restore` calls once the recipe has read its data and built its models:
    a run that stops on bad input (a missing file, a damaged model) leaves an earlier run's
    checkpoints, logs and tokenizer in the same folder as they were.

    Two runs never write one folder at once: :meth:`start` takes the folder's lock
    (:func:`textgan.checkpoint.lock_folder`) until :meth:`close` (which :func:`finish` calls) or the process
    ends, and a run whose folder another process holds stops with one line, at once if that run had started
    before it, instead of removing the other's checkpoints (a fresh start) or writing its steps into the
    other's log (``resume=true``).
    """

    def __init__(self, config: RunConfig):
        config.check()  # a config made in Python is checked as the command line's is, before anything is written
        self.config = config
        self.dir = Path(config.out_dir)
        self.checkpoints = self.dir / "checkpoints"
        self.started = time.time()
        self.last_diversity: dict | None = None  # the previous evaluation's scores, to spot mode collapse
        self.writes = distributed.is_main()
        self._tokenizer = None  # a new run's tokenizer, saved by start()
        self._let_go = None  # drops the folder's lock (start() takes it)
        distributed.raise_rank_zeros(self._check_folder if self.writes else None)

    def _check_folder(self) -> None:
        """A ConfigError unless out_dir can be written, is no other process's run's while it trains, and holds no
        config.yaml but a textgan run's."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write the run folder out_dir={self.config.out_dir} "
                              f"({e.strerror or type(e).__name__}); choose a folder you can write") from None
        check_not_in_use(self.dir, _in_use)
        if (self.dir / "config.yaml").is_file() and not self._earlier_run():
            raise ConfigError(f"out_dir={self.config.out_dir} holds a config.yaml that is not a textgan run's, which "
                              "the run would overwrite; choose another out_dir (e.g. runs/NAME)")

    def _earlier_run(self) -> bool:
        """Whether out_dir's config.yaml is a textgan run's resolved config (not a user's own file of that name)."""
        return run_config(self.dir) is not None

    def export(self, name: str, write) -> Path:
        """The run's exported model folder ``name`` (of :data:`EXPORTS`), written whole or not at all:
        ``write(folder)`` fills a temporary folder beside it, which then takes the earlier export's place.
        A crash meanwhile leaves the earlier export or none, never part of one, so that the run folder
        stands for a whole model or for its newest checkpoint."""
        return write_folder_atomic(self.dir / name, self.dir / f".{name}.partial", write)

    def keep_tokenizer(self, tokenizer) -> None:
        """Save ``tokenizer`` into ``out_dir/tokenizer`` when the run starts (a resumed run reads it back)."""
        self._tokenizer = tokenizer

    def start(self) -> None:
        """Write the resolved config and the new tokenizer; a fresh run (not ``resume``) first removes
        what an earlier run left in ``out_dir`` (checkpoints, metrics and their plot, samples and the model
        it exported), if an earlier run is there: a folder with a textgan ``config.yaml``, never a user's own samples.txt.
        Until the new run exports its own, its folder then stands for its newest checkpoint, not for the
        earlier run's model (``textgan sample --model RUN`` during training or after a crash)."""
        if not self.writes:
            return
        if self._let_go is None:
            let_go = lock_folder(self.dir, _in_use)
            if let_go is not None:
                self._let_go = weakref.finalize(self, let_go)  # at close(), or when this Run is collected
        if not self.config.resume and (self.dir / "config.yaml").is_file() and self._earlier_run():
            import shutil

            shutil.rmtree(self.checkpoints, ignore_errors=True)
            for name in ("metrics.jsonl", "samples.txt", "metrics.json", "curves.png", "rewrites_dev.txt",
                         "rewrites_test.txt"):
                (self.dir / name).unlink(missing_ok=True)
            for name, marker in EXPORTS.items():  # only a folder that holds what the export writes
                if (self.dir / name / marker).is_file():
                    shutil.rmtree(self.dir / name)
        if self._tokenizer is not None:
            with writing(self.dir / "tokenizer"):
                self._tokenizer.save_pretrained(self.dir / "tokenizer")
        write_text_atomic(self.dir / "config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))

    def close(self) -> None:
        """Let go of the run folder's lock (:meth:`start`): another run may write there now."""
        if self._let_go is not None:
            self._let_go()

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.writes:
            return
        record = {"step": step, "time": round(time.time() - self.started, 2), **values}
        path = self.dir / "metrics.jsonl"
        with writing(path), open(path, "a", encoding="utf-8") as f:  # a line cut by a full disk: dropped on resume
            f.write(json_text(record, indent=None))

    def write_samples(self, step: int, texts: list[str]) -> None:
        """Append an evaluation's samples under a ``# step N`` line, replacing an earlier block of the same
        step (a finished run resumed evaluates its last step again)."""
        if not self.writes:
            return
        self._keep_samples(lambda logged: logged < step)
        path = self.dir / "samples.txt"
        with writing(path), open(path, "a", encoding="utf-8") as f:
            f.write(f"# step {step}\n" + "\n".join(texts) + "\n")

    def _keep_samples(self, keep) -> None:
        """Rewrite samples.txt with the blocks whose step passes ``keep``, if any does not."""
        path = self.dir / "samples.txt"
        if not path.is_file():
            return
        blocks = sample_blocks(path.read_text(encoding="utf-8").splitlines())
        if all(step is None or keep(step) for step, _ in blocks):
            return
        kept = [f"# step {step}\n" + "".join(line + "\n" for line in lines) for step, lines in blocks
                if step is not None and keep(step)]
        write_text_atomic(path, "".join(kept))

    def truncate_log(self, step: int) -> None:
        """Drop metrics.jsonl and samples.txt records after ``step`` (written before a crash, redone on resume)."""
        if not self.writes:
            return
        log = self.dir / "metrics.jsonl"
        if log.is_file():
            lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line, logged in zip(lines, map(_log_step, lines)) if logged is not None and logged <= step]
            write_text_atomic(log, "".join(kept))
        self._keep_samples(lambda logged: logged <= step)


@dataclass
class Setup:
    corpus: Corpus
    tokenizer: Any
    train_ids: torch.Tensor  # (N, max_length + 2): bos, tokens, eos, pad
    valid_ids: torch.Tensor
    generator: torch.nn.Module
    bos_id: int
    eos_id: int
    pad_id: int
    device: torch.device


def prepare(config: RunConfig, run: Run) -> Setup:
    """Load the corpus, build or load the tokenizer and the generator."""
    device = resolve_device(config.device)
    corpus = load_corpus(config.data, valid_source=config.valid_file, hf_split=config.hf_split,
                         hf_text_column=config.hf_text_column, grammar_sentences=config.grammar_sentences,
                         valid_fraction=config.valid_fraction, seed=config.seed)
    tokenizer_dir = run.dir / "tokenizer"
    if config.model:
        generator, tokenizer = load_generator(config.model, trust_remote_code=config.trust_remote_code)
    else:
        if config.resume and (tokenizer_dir / "tokenizer.json").is_file():
            tokenizer = load_run_tokenizer(tokenizer_dir)
        else:
            tokenizer = build_tokenizer(config.tokenizer, corpus.train, config.vocab_size or None)
            run.keep_tokenizer(tokenizer)
        bos, eos, pad = special_ids(tokenizer)
        generator = build_generator(len(tokenizer), bos_id=bos, eos_id=eos, pad_id=pad, d_model=config.d_model,
                                    n_layers=config.n_layers, n_heads=config.n_heads, d_ff=config.d_ff,
                                    max_positions=config.max_length + 2)
    bos, eos, pad = special_ids(tokenizer)
    train_ids, dropped = encode(corpus.train, tokenizer, config.max_length)
    valid_ids, _ = encode(corpus.valid, tokenizer, config.max_length)
    if len(train_ids) == 0:
        raise ConfigError(f"no training sentence fits in max_length={config.max_length} tokens; raise max_length")
    if dropped:
        print(f"note: {dropped} of {len(corpus.train)} training sentences are longer than max_length={config.max_length} tokens and were dropped")
    return Setup(corpus, tokenizer, train_ids, valid_ids, generator.to(device), bos, eos, pad, device)


def nll_on(generator, ids: torch.Tensor, eos_id: int, batch_size: int = 256, temperature: float = 1.0) -> float:
    """Mean per-token NLL (nats, end token included) of ``ids`` (N, L) under the generator at ``temperature``.

    Rows are taken shortest first, ``batch_size`` at a time, and each batch is cut to its longest row,
    so the model does little work past the rows' end tokens (on COCO's test set, padded to its longest
    caption, three times less).
    """
    total, count = 0.0, 0
    device = next(generator.parameters()).device
    mask = sequence_mask(ids[:, 1:], eos_id)
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            width = max(int(lengths[rows].max()), 1)
            batch, batch_mask = ids[rows, : width + 1].to(device), mask[rows, :width].to(device)
            total += float(-scored_logprobs(generator, batch, batch_mask, temperature).double().sum())
            count += int(batch_mask.sum())
    return total / max(count, 1)


def evaluate(setup: Setup, config: RunConfig, n: int | None = None) -> tuple[dict[str, float], list[str]]:
    """Sample ``n`` sentences at ``config.temperature`` and measure quality and diversity.

    Returns ``eval/...`` metrics and the samples. With a grammar corpus the grammatical rate and
    grammar NLL are exact; ``ref/...`` gives the same diversity numbers for as many training
    sentences, the figure a good generator should match.
    """
    if not distributed.is_main():  # rank 0 evaluates for everyone
        return {}, []
    n = n or config.eval_samples
    generator = setup.generator
    with eval_mode(generator):
        # its own seeded stream: resuming a run reproduces it exactly
        samples = sample_texts(generator, setup.tokenizer, n, temperature=config.temperature,
                               max_length=config.max_length, seed=config.seed + 1)
        out = {"eval/nll_valid": nll_on(generator, setup.valid_ids, setup.eos_id)}
    reference = random.Random(config.seed).sample(setup.corpus.train, min(n, len(setup.corpus.train)))
    for k in (1, 2, 3, 4):
        out[f"eval/distinct_{k}"] = metrics.distinct_n(samples, k)
    out["ref/distinct_4"] = metrics.distinct_n(reference, 4)
    out["eval/unique"] = metrics.unique_rate(samples)
    out["eval/copied"] = metrics.copy_rate(samples, set(setup.corpus.train))
    out["eval/mean_length"] = sum(len(s.split()) for s in samples) / max(len(samples), 1)
    if setup.corpus.grammar is not None:
        scores = metrics.grammar_scores(samples, setup.corpus.grammar)
        out["eval/grammatical"] = scores["grammatical"]
        out["eval/grammar_nll"] = scores["grammar_nll"]
        out["ref/grammar_nll"] = metrics.grammar_scores(setup.corpus.valid, setup.corpus.grammar)["grammar_nll"]
    return out, samples


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


class _NonFiniteGuard:
    """Counts skipped steps; ``limit`` in a row stops the run (its last checkpoint stays intact)."""

    limit = 20

    def __init__(self):
        self.in_a_row = 0
        self.total = 0

    def skip(self) -> None:
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteError(f"{self.in_a_row} steps in a row had a non-finite loss or gradient; the run stopped. "
                                 "Lower the learning rate or raise grad_clip, then resume=true from the last checkpoint")


nonfinite = _NonFiniteGuard()


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: torch.nn.Module, clip: float) -> float:
    """Backpropagate ``loss``, clip the gradient norm of ``module``, step; return the loss.

    A non-finite loss or gradient norm skips the update (gradients dropped, parameters and
    optimizer state untouched) and is counted in ``nonfinite``; the returned loss is then NaN.
    """
    optimizer.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
    if distributed.active():  # average over processes; a non-finite loss anywhere makes every process skip
        loss = distributed.average_gradients(module, poison=not finite, loss=loss)  # the global batch's (rl.loss_mean)
    elif not finite:
        nonfinite.skip()
        return float("nan")
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        nonfinite.skip()
        return float("nan")
    nonfinite.in_a_row = 0
    optimizer.step()
    return float(loss.detach())


def adam(params, *, decoupled: bool = True, **options) -> torch.optim.Optimizer:
    """AdamW (or Adam with ``decoupled=False``) using the fused kernel where the device has one.

    The fused kernel updates every parameter in one pass instead of a dozen elementwise
    passes over the parameter list: at 2M parameters on a CPU the optimizer step is about 5x
    faster, about 2% of a d256 MLE training step there. The update is the same maths.
    """
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return (torch.optim.AdamW if decoupled else torch.optim.Adam)(params, fused=fused or None, **options)


def teacher_forced_nll(generator, batch: torch.Tensor, eos_id: int) -> torch.Tensor:
    """The differentiable mean per-token NLL of ``batch`` (B, L), rows starting with BOS, end token included."""
    return mle_loss(token_logprobs(generator, batch), sequence_mask(batch[:, 1:], eos_id))


def mle_step(generator, optimizer, batch: torch.Tensor, eos_id: int, clip: float = 1.0) -> float:
    """One teacher-forced maximum-likelihood step on ``batch`` (B, L) starting with BOS."""
    return optimizer_step(teacher_forced_nll(generator, batch, eos_id), optimizer, generator, clip)


def gan_optimizers(config: GANConfig, generator, discriminator) -> dict[str, torch.optim.Optimizer]:
    """Adam for G's policy-gradient steps, AdamW for its MLE steps and for D."""
    betas = parse_betas(config.betas)
    return {
        "generator": adam(generator.parameters(), decoupled=False, lr=config.gen_lr, betas=betas),
        "discriminator": adam(discriminator.parameters(), lr=config.disc_lr, betas=betas,
                              weight_decay=config.disc_weight_decay),
        "mle": adam(generator.parameters(), lr=config.mle_lr),
    }


def linear_decay(lr: float, steps: int, fraction: float, step: int) -> float:
    """The learning rate at step ``step`` (0 for the first) of ``steps``: ``lr``, then over the last
    ``fraction`` of the steps a linear fall that reaches ``lr / n`` on the last of those n steps. A
    function of the step alone, so a resumed run follows the same schedule."""
    n = round(fraction * steps)
    return lr * min(1.0, (steps - step) / n) if n else lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate to ``lr``. -> ``lr`` (to log)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def gen_lr_at(config: GANConfig, step: int) -> float:
    """G's learning rate at adversarial step ``step``: ``gen_lr``, falling over the last ``gen_lr_decay``
    of the ``steps`` (:func:`linear_decay`)."""
    return linear_decay(config.gen_lr, config.steps, config.gen_lr_decay, step)


def schedule_gen_lr(optimizer: torch.optim.Optimizer, config: GANConfig, step: int) -> float:
    """Set G's optimizer to :func:`gen_lr_at` for adversarial step ``step``. -> that rate (to log)."""
    return set_lr(optimizer, gen_lr_at(config, step))


def report(values: dict[str, float]) -> str:
    """The end-of-run table."""
    rows = [
        ("grammatical rate of samples", "eval/grammatical", None),
        ("NLL of samples under the grammar (nats/token)", "eval/grammar_nll", "ref/grammar_nll"),
        ("generator NLL on held-out sentences (nats/token)", "eval/nll_valid", None),
        ("distinct-4 of samples", "eval/distinct_4", "ref/distinct_4"),
        ("unique samples", "eval/unique", None),
        ("samples copied from the training set", "eval/copied", None),
    ]
    def cell(value) -> str:
        return f"{value:8.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{'n/a':>8}"

    lines = [f"{'metric':<50} {'value':>8} {'corpus':>8}", "-" * 68]
    for label, key, ref in rows:
        if key in values:
            lines.append(f"{label:<50} {cell(values[key])} {cell(values[ref]) if ref in values else ''}")
    return "\n".join(lines)


def finish(run: Run, setup: Setup, values: dict[str, Any]) -> dict[str, Any]:
    """Export the generator, write metrics.json, print the table."""
    from .models.generator import export_generator

    if not run.writes:
        return values
    run.export("generator", lambda folder: export_generator(setup.generator, setup.tokenizer, folder))
    values = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
    values["time/total_s"] = round(time.time() - run.started, 1)
    write_text_atomic(run.dir / "metrics.json", json_text(values))
    print(report(values))
    print(f"\nrun folder: {run.dir}  (generator exported to {run.dir / 'generator'}; "
          f"try: textgan sample --model {run.dir / 'generator'} -n 10; training curves: textgan plot {run.dir})")
    run.close()
    return values


def restore(run: Run, modules: dict, optimizers: dict, device) -> dict | None:
    """Load the newest valid checkpoint of ``run`` if ``resume`` is set, then start the run
    (:meth:`Run.start`); return the checkpoint's state or None.

    A damaged checkpoint (truncated, failing its checksum) is skipped with a warning and the
    previous one is tried. An intact checkpoint that does not fit the modules (the run was started
    with another model size or recipe) is a ConfigError: starting over would overwrite it. Log
    lines written after the restored step are dropped, so that the resumed run's metrics.jsonl
    reads as if it had never stopped.
    """
    state = _load_newest(run, modules, optimizers, device) if run.config.resume else None
    # after loading: a resume that fails leaves the run's config.yaml as it was; another process's run that took
    # the folder meanwhile stops every process
    distributed.raise_rank_zeros(run.start)
    if run.config.resume:
        run.truncate_log(state["step"] if state else 0)
    distributed.broadcast_modules(modules.values())  # every process starts from rank 0's weights
    return state


def _load_newest(run: Run, modules: dict, optimizers: dict, device) -> dict | None:
    """The state of the newest checkpoint that loads, skipping damaged ones; None if there is none."""
    found = list_checkpoints(run.checkpoints)
    if not found:
        print(f"resume=true but {run.checkpoints} holds no checkpoint; starting from scratch")
        return None
    for path in reversed(found):
        try:
            state = load_checkpoint(path, modules, optimizers, map_location=device)
        except CheckpointMismatch as e:  # intact, but another model's: starting over would overwrite it
            raise ConfigError(f"cannot resume: {e}. Resume with the settings the run was started with (its "
                              f"{run.dir / 'config.yaml'}), or start a new run in another out_dir") from None
        except CheckpointError as e:
            print(f"warning: skipping checkpoint: {e}", file=sys.stderr)
            continue
        if run.writes:
            print(f"resumed from {path} (step {state['step']})")
        return state
    print(f"warning: no usable checkpoint in {run.checkpoints}; starting from scratch", file=sys.stderr)
    return None


def progress(total: int, initial: int, desc: str):
    """A tqdm bar; redrawn rarely when the output is a log file rather than a terminal."""
    import sys

    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=0.1 if interactive else 30.0,
                disable=not distributed.is_main())


def collapse_warning(before: dict | None, after: dict, drop: float = 0.3) -> str | None:
    """A warning when the unique-sample rate or distinct-4 fell by more than ``drop`` (relative) since the last evaluation."""
    if not before:
        return None
    fallen = [f"{key.split('/')[-1]} {before[key]:.3f} -> {after[key]:.3f}" for key in ("eval/unique", "eval/distinct_4")
              if key in before and key in after and after[key] < (1 - drop) * before[key]]
    return f"possible mode collapse: {', '.join(fallen)}" if fallen else None


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint of the last finished step was written."""

    def __init__(self, signum: int, step: int, path, meanwhile: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {path}; "
                         "run the same command with resume=true to continue"
                         + (f" (meanwhile, '{meanwhile}' uses the model of this checkpoint)" if meanwhile else ""))
        self.signum = signum


class _StopRequest:
    """Set by SIGINT/SIGTERM while :func:`graceful_stop` is active; the loop stops at the step's end."""

    signum: int | None = None


stop_request = _StopRequest()


class graceful_stop:
    """Within this context, SIGINT and SIGTERM let the current step finish, checkpoint, and stop.

    A second signal stops at once, as usual.
    """

    def __enter__(self):
        stop_request.signum = None
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._previous:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if stop_request.signum is not None:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop_request.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint", file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        stop_request.signum = None
        return False


def export_entry(setup: Setup, modules: dict) -> dict | None:
    """What a checkpoint records of the model the run exports when it ends (``setup.generator``: the
    weight average where there is one): the module that holds its weights and its Hugging Face config,
    from which :func:`textgan.models.generator.load_generator` rebuilds it for a run that has not
    exported yet (stopped early, or still training). None where no checkpointed module is that model."""
    name = next((name for name, module in modules.items() if module is setup.generator), None)
    if name is None:
        return None
    return {"module": name, "config": json.loads(setup.generator.config.to_json_string(use_diff=False))}


def periodic(run: Run, setup: Setup | None, config, step: int, values: dict[str, float], bar,
             modules: dict, optimizers: dict, state: dict | None = None, last_step: int = -1,
             evaluator=None) -> None:
    """After step ``step`` (1-based count of finished steps): log, evaluate, checkpoint.

    No evaluation at ``last_step``: the recipe evaluates once more when it finishes.
    ``evaluator()`` returns (scores, sample lines); by default :func:`evaluate` of the generator.
    """
    from tqdm import tqdm

    from .checkpoint import save_checkpoint

    if step % config.log_every == 0:
        values = distributed.averaged(values)  # under torchrun: a loss the global batch's
        if nonfinite.total:  # a count, not a mean: every process skips the same steps (optimizer_step)
            values = {**values, "train/nonfinite_skipped": nonfinite.total}
        run.log(step, values)
        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in values.items()}, refresh=False)
    if step % config.eval_every == 0 and step != last_step and run.writes:
        scores, samples = evaluator() if evaluator is not None else evaluate(setup, config)
        run.log(step, scores)
        run.write_samples(step, samples)
        shown = ", ".join(f"{k.split('/', 1)[-1]} {v:.3f}" for k, v in scores.items() if k.startswith("eval/"))
        tqdm.write(f"[step {step}] {shown}")
        warning = collapse_warning(run.last_diversity, scores)
        if warning:
            tqdm.write(f"warning: {warning}")
        run.last_diversity = scores
        for text in samples[: config.print_samples]:
            tqdm.write(f"    {text}")
    if step % config.checkpoint_every == 0 or stop_request.signum is not None:
        distributed.check_in_sync(modules.values())
        path = run.checkpoints
        if run.writes:
            export = export_entry(setup, modules) if setup else None
            extra = {"config": to_dict(config), **({"export": export} if export else {})}
            path = save_checkpoint(run.checkpoints, step, modules, optimizers, dict(state or {}, **extra),
                                   keep=config.keep_checkpoints)
        if stop_request.signum is not None and step != last_step:
            export = (state or {}).get("export", {})
            transfer = export.get("transfer")
            meanwhile = (f"textgan sample --model {run.dir}" if setup else
                         f"textgan transfer --model {run.dir} --from {transfer['styles'][0]} --to "
                         f"{transfer['styles'][1]} ..." if transfer else
                         f"classifier={run.dir}" if "classifier" in export else "")
            raise Interrupted(stop_request.signum, step, path, meanwhile)
