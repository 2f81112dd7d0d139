"""The generator: any ``transformers`` causal LM; by default a small Llama trained from scratch.

Keeping the generator a stock ``transformers`` model means a trained one is saved in the
Hugging Face format and loads anywhere (``AutoModelForCausalLM.from_pretrained``,
``pipeline("text-generation")``), and a pretrained LM can be dropped in as the generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import hub
from . import fast_forward
from .fast_forward import causal_lm_logits


class ModelError(ValueError):
    """A model folder could not be used; the message says what to do."""


def load_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or foreign model folder raises: unreadable files, bad JSON, missing
    keys, mismatched shapes, and safetensors' own error for a truncated or corrupt weights file."""
    from safetensors import SafetensorError

    return OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError


def build_generator(
    vocab_size: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    d_ff: int = 0,
    max_positions: int = 64,
    dropout: float = 0.0,
):
    """A Llama-architecture decoder sized for a CPU (about 0.5M parameters by default)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads,
             "max_positions": max_positions}
    small = [f"{name}={value}" for name, value in sizes.items() if value < 1] + ([f"d_ff={d_ff}"] if d_ff < 0 else [])
    if small:  # else a ZeroDivisionError from the rotary embeddings, or a model that cannot hold a token
        raise ValueError(f"build_generator needs positive sizes (d_ff 0 for 4 * d_model), got {', '.join(small)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    named = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
    outside = [f"{name}={value}" for name, value in named.items() if not 0 <= value < vocab_size]
    if outside:  # transformers only warns, and the first forward pass fails with an index error
        raise ValueError(f"{', '.join(outside)} outside the vocabulary of {vocab_size} tokens (ids 0..{vocab_size - 1})")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_ff or 4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_positions,
        attention_dropout=dropout,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    _set_generation_defaults(model, max_positions)
    return model


def _set_generation_defaults(model, max_positions: int) -> None:
    config = model.config
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = config.bos_token_id, config.eos_token_id, config.pad_token_id
    gen.do_sample = True
    gen.max_length = max_positions


# Where textgan's recipes export their model inside a run folder: generator/ (GAN and MLE runs), model/ (style transfer)
EXPORTED_MODEL_FOLDERS = ("generator", "model")


def model_folder(path: str, names: tuple[str, ...] = EXPORTED_MODEL_FOLDERS, marker: str = "config.json") -> str:
    """The model folder ``path`` means: ``path`` itself, or, given a textgan run folder, the model it
    exported: the first of its subfolders ``names`` that holds ``marker`` (the file a model folder has)."""
    local = Path(path).expanduser()
    if local.is_dir() and not (local / marker).is_file():
        for name in names:
            if (local / name / marker).is_file():
                return str(Path(path) / name)
    return path


def model_digest(path: str) -> str:
    """SHA-256 over the files of a local model folder (for a run folder: of the model it exported, or of
    its newest checkpoint where it has exported none yet); a hub name stands for itself."""
    import hashlib

    folder = Path(model_folder(path)).expanduser()
    if not folder.is_dir():
        return "hub:" + path
    checkpoints = [] if (folder / "config.json").is_file() else run_checkpoints(folder)
    if checkpoints:
        return "checkpoint:" + hashlib.sha256((checkpoints[0] / "state.json").read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def run_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints a local folder stands for, newest first: itself, if it is a checkpoint folder
    (``runs/x/checkpoints/step_00000500``), those it holds if it is a run's ``checkpoints`` folder, or
    those of a textgan run folder."""
    from ..checkpoint import list_checkpoints

    if folder.name.startswith("step_") and (folder / "state.json").is_file():
        return [folder]
    return (list_checkpoints(folder) or list_checkpoints(folder / "checkpoints"))[::-1]


def read_run_checkpoint(checkpoints: list[Path]) -> tuple[Path, dict, dict]:
    """(folder, tensors, state) of the first intact one of ``checkpoints`` (:func:`run_checkpoints`),
    warning on stderr of each damaged one passed over."""
    import sys

    from ..checkpoint import CheckpointError, read_checkpoint

    for checkpoint in checkpoints:
        try:
            return (checkpoint, *read_checkpoint(checkpoint))
        except CheckpointError as e:
            print(f"warning: {e}; trying the one before it", file=sys.stderr)
    raise ModelError(f"{checkpoints[-1].parent}: no checkpoint is intact, and the run exported no model")


def checkpoint_generator(checkpoints: list[Path], *, trust_remote_code: bool = False):
    """(model, tokenizer): the model a textgan run exports when it ends, rebuilt from the first intact
    one of ``checkpoints`` (:func:`run_checkpoints`), so that a run that stopped early, or is still
    training, can be sampled and scored. The checkpoint names the module (the weight average where
    the run keeps one) and records its Hugging Face config; the tokenizer is the run's own, or that
    of the model it started from. Says on stderr which step it loads."""
    checkpoint, tensors, meta = read_run_checkpoint(checkpoints)
    export = meta.get("export") or {}
    transfer = export.get("transfer")
    if transfer:  # as for an exported style-transfer model (textgan sample's --style)
        raise ModelError(f"{checkpoint.parent.parent} is a style-transfer run; choose a style with --style "
                         f"({', '.join(map(str, transfer['styles']))}), or rewrite sentences with textgan transfer")
    if "classifier" in export:
        raise ModelError(f"{checkpoint.parent.parent} is a classifier run, not a generator's; give it where a classifier "
                         "is asked for (classifier=), or a generator or style-transfer run here")
    return generator_from_checkpoint(checkpoint, tensors, meta, trust_remote_code=trust_remote_code)


def generator_from_checkpoint(checkpoint: Path, tensors: dict, meta: dict, *, trust_remote_code: bool = False):
    """(model, tokenizer) of the export a checkpoint records (:func:`checkpoint_generator`), from its
    tensors and state as :func:`read_run_checkpoint` gives them."""

    from transformers import AutoConfig, AutoModelForCausalLM

    export = meta.get("export")
    if not export:
        raise ModelError(f"{checkpoint} does not record a model to export (one of an older textgan); run its command "
                         "again with resume=true to finish and export it")
    prefix = f"model/{export['module']}/"
    try:
        config = dict(export["config"])
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config),
                                                 trust_remote_code=trust_remote_code)
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except load_errors() as e:
        raise ModelError(f"{checkpoint}: cannot rebuild the run's model from it ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); run its command again with resume=true to "
                         "finish and export it") from None
    run_dir = checkpoint.parent.parent
    tokenizer = run_tokenizer(run_dir, meta.get("config", {}).get("model"), trust_remote_code)
    say_checkpoint(run_dir, meta["step"], model_folder(str(run_dir)))
    return model.eval(), tokenizer


def say_checkpoint(run_dir: Path, step: int, exported: str, what: str = "model") -> None:
    """Say on stderr which checkpoint stands in for a run's exported ``what``: the run has exported none
    (``exported``, the folder it would, is ``run_dir`` itself: it stopped early, or is still training), or
    a checkpoint was asked for by name though the run has ended (then ``exported`` is its export)."""
    import sys

    if Path(exported) != run_dir:
        print(f"note: using {run_dir}'s checkpoint of step {step} (the {what} it exported at its end is {exported})",
              file=sys.stderr)
    else:
        print(f"note: {run_dir} has not exported its {what} (it stopped early, or is still training): using its "
              f"checkpoint of step {step}", file=sys.stderr)


def run_tokenizer(run_dir: Path, started_from: str | None, trust_remote_code: bool):
    """The tokenizer of a run's model: the run's own, or that of the model it started from (``model=``),
    which may itself be a run that has not exported yet."""
    from transformers import AutoTokenizer

    from ..tokenization import load_run_tokenizer

    if (run_dir / "tokenizer" / "tokenizer.json").is_file():
        return load_run_tokenizer(run_dir / "tokenizer")
    if not started_from:
        raise ModelError(f"{run_dir}: the run's tokenizer folder is missing; its checkpoints cannot be read as text")
    source = model_folder(started_from)
    local = Path(source).expanduser()
    checkpoints = run_checkpoints(local) if local.is_dir() and not (local / "config.json").is_file() else []
    if checkpoints:
        meta = json.loads((checkpoints[0] / "state.json").read_text(encoding="utf-8"))
        return run_tokenizer(checkpoints[0].parent.parent, meta.get("config", {}).get("model"), trust_remote_code)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                         local_files_only=hub.cache_only(source))


def looks_like_a_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path, not a hub name: it starts like one, has more than one '/', or its
    first folder is here ("runs/x")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (
        "/" in name and Path(name.split("/")[0]).is_dir())


def load_generator(path: str, *, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a local folder, a textgan run folder, or a hub name.

    Returns (model, tokenizer). Raises :class:`ModelError` with a one-line explanation when
    ``path`` is not a causal LM folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not path.strip():
        raise ModelError("no model was named (an empty path); give a model folder, a textgan run folder or a hub name")
    path = model_folder(path)
    local = Path(path).expanduser()
    if not local.exists() and looks_like_a_path(path):
        raise ModelError(f"{path}: no such folder; give a textgan run folder (or its 'generator' folder) or a Hugging "
                         "Face model name")
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"{path} is a file; give the folder of a trained generator (it holds config.json)")
        if not (local / "config.json").is_file():
            checkpoints = run_checkpoints(local)
            if checkpoints:  # a run that stopped early or is still training: the model it would export
                return checkpoint_generator(checkpoints, trust_remote_code=trust_remote_code)
            from ..training import run_config

            if run_config(local) is not None:  # a run folder, or a folder inside one (runs/x/tokenizer)
                run = local.parent
                if not (local / "config.yaml").is_file() and (run_checkpoints(run) or model_folder(str(run)) != str(run)):
                    raise ModelError(f"{path} holds no model; give the run folder {run}, which has one")
                # a run started afresh, or still before its first checkpoint
                raise ModelError(f"{path}: this run has exported no model and written no checkpoint yet; sample once "
                                 "it has written one (every checkpoint_every steps) or finished")
            raise ModelError(f"{path} has no config.json; give a textgan run folder (or its 'generator' folder) or a "
                             "Hugging Face model folder")
    # A hub name with no way to the hub: read the local cache only, at once, instead of the hub
    # client's retries (about a minute of them, and a screen of warnings) before the same failure.
    offline = hub.cache_only(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=offline)
    except load_errors() as e:
        if offline:
            raise ModelError(f"{path}: no such folder, and the Hugging Face hub cannot be reached (nor is the model in "
                             "its local cache); give a model folder, or connect and try again") from None
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load a causal LM from {path}: {first_line}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ModelError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only {model.get_input_embeddings().num_embeddings}; they do not belong together")
    return model, tokenizer


def export_folder(out_dir: str | Path) -> Path:
    """``out_dir`` as the folder a model is saved into, or a ValueError: an empty path would be the current folder,
    which would take the model's files, and into a file transformers writes nothing, logging an error only."""
    if not str(out_dir).strip():
        raise ValueError("no folder was named (an empty path); give the folder to save the model into")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder to save the model into")
    return out_dir


def export_generator(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model and tokenizer in Hugging Face format (safetensors weights) into the folder ``out_dir``."""
    from transformers.utils import logging as hf_logging

    out_dir = export_folder(out_dir)
    hf_logging.disable_progress_bar()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def token_logprobs(model, ids: torch.Tensor, with_entropy: bool = False, temperature: float = 1.0):
    """Log-probabilities of ``ids[:, 1:]`` given their prefixes, by one teacher-forced pass.

    Args:
        ids: (B, T+1) long, starting with BOS.
        temperature: score under the model's distribution at this temperature (logits / T).
    Returns:
        logprobs (B, T) float; with ``with_entropy``, also the policy entropy (B, T).
    """
    if not with_entropy and temperature == 1.0 and fast_forward.applies(model, ids.device.type):
        return fast_forward.head_logprobs(model, fast_forward.hidden_states(model, ids[:, :-1]), ids[:, 1:])
    logits = causal_lm_logits(model, ids[:, :-1]).float()  # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    logprobs = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logprobs
    entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy


def scored_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``ids[:, 1:]`` where ``mask`` is True, flattened: what scoring needs, with no
    work for the vocabulary head at padding.

    Args:
        ids: (B, T+1) long, starting with BOS; mask: (B, T) bool, True at the tokens to score.
        temperature: score under the model's distribution at this temperature (logits / T).
    Returns:
        (N,) float, N = mask.sum(), in the order of ``ids[:, 1:][mask]``.
    """
    targets = ids[:, 1:][mask]
    if fast_forward.applies(model, ids.device.type):
        hidden = fast_forward.hidden_states(model, ids[:, :-1])[mask]  # (N, C)
        # logits / T = (hidden / T) @ W.T: the head (row-chunked where the logits are large) at any temperature
        return fast_forward.head_logprobs(model, hidden / temperature if temperature != 1.0 else hidden, targets)
    logits = causal_lm_logits(model, ids[:, :-1])[mask].float()  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
