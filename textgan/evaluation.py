"""Scoring sample sets and sweeping temperature: the engine behind ``textgan evaluate`` and ``textgan sweep``.

Every metric is a pure function of text (plus a model where it needs one), so a sample file
from any system can be scored exactly as textgan's own samples are. A single temperature is a
single point on the quality-diversity trade-off; Caccia et al. (2020) showed that comparing
points misleads, so ``sweep`` traces each model's curve over temperatures.

Metric names:
    bleu-n, self-bleu-n   Texygen-protocol BLEU against all references / leave-one-out Self-BLEU
    distinct-n, unique    diversity of the sample set
    copied                fraction of samples found verbatim in the training text
    nll-test              the model's per-token NLL on held-out text, at the sampling temperature
    lm-nll                NLL of the samples under a language model trained on real text (quality)
    reverse-lm-nll        NLL on the references of an MLE model trained on the samples (coverage)
    nll-oracle            the SeqGAN oracle's per-token NLL of the samples
    grammatical, grammar-nll   exact scores under the embedded grammar
    fed                   Fréchet embedding distance to the references
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import metrics as text_metrics
from .bleu import bleu, check_orders, self_bleu
from .config import check_sentences
from .data import json_text, write_text_atomic
from .sampling import check_settings, eval_mode, sample_texts

ALL_METRICS = ("bleu", "self-bleu", "distinct", "unique", "copied", "fed", "lm", "reverse-lm", "nll-oracle", "grammar")
NEEDS = {"bleu": "references", "fed": "references", "reverse-lm": "references", "copied": "train", "lm": "lm",
         "nll-oracle": "oracle"}


class EvaluationError(ValueError):
    """A metric cannot be computed from what was given; the message says what to pass."""


def last_evaluation(lines: list[str]) -> tuple[list[str], list[int]]:
    """The samples of the last evaluation in a run's ``samples.txt``, and the steps of all of them.

    A recipe appends each evaluation's samples to ``samples.txt`` under a ``# step N`` line; scored
    whole, such a file would mix the models of several steps and count the header lines as
    sentences. Lines with no such header are returned whole, with no steps.
    """
    from .data import sample_blocks

    blocks = sample_blocks(lines)
    steps = [step for step, _ in blocks if step is not None]
    return (blocks[-1][1], steps) if steps else (lines, [])


def parse_metrics(text: str | list[str]) -> list[str]:
    """Metric names, from a comma-separated string (``--metrics bleu,self-bleu``) or a list; an EvaluationError
    for none or an unknown one."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        what = f"unknown metric {', '.join(unknown)}" if unknown else "no metric named"
        raise EvaluationError(f"{what}; choose from {','.join(ALL_METRICS)}")
    return names


def metric_of(score_name: str) -> str:
    """The metric that produces a score: 'bleu-5' -> 'bleu', 'lm-nll' -> 'lm', 'grammatical' -> 'grammar',
    'nll-test' -> 'nll-test'."""
    for prefix, metric in (("self-bleu-", "self-bleu"), ("bleu-", "bleu"), ("distinct-", "distinct"), ("fed", "fed"),
                           ("reverse-lm", "reverse-lm"), ("lm-", "lm"), ("grammar", "grammar"), ("grammatical", "grammar")):
        if score_name.startswith(prefix):
            return metric
    return score_name


def default_metrics(*, references: bool, train: bool, lm: bool, oracle: bool, grammar: bool) -> list[str]:
    """The metrics that what was given allows (FED and reverse-LM, being slow, only on request)."""
    names = ["self-bleu", "distinct", "unique"]
    names += ["bleu"] if references else []
    names += ["copied"] if train else []
    names += ["lm"] if lm else []
    names += ["nll-oracle"] if oracle else []
    names += ["grammar"] if grammar else []
    return names


def sentences_nll(model, tokenizer, sentences: list[str], temperature: float = 1.0, batch_size: int = 256) -> tuple[float, int]:
    """Per-token NLL (end token included) of sentences under a causal LM; sentences beyond its length are dropped.

    Returns (nll, number dropped).
    """
    from .data import encode
    from .tokenization import special_ids
    from .training import nll_on

    check_sentences(sentences)
    check_settings(temperature)  # a temperature of 0 gave nan
    if batch_size < 1:
        raise ValueError(f"sentences_nll needs batch_size at least 1, got {batch_size}")
    if not sentences:
        raise EvaluationError("no sentences to score")
    _, eos, pad = special_ids(tokenizer)
    limit = getattr(model.config, "max_position_embeddings", 64) - 2
    ids, dropped = encode(sentences, tokenizer, limit)
    if not len(ids):
        raise EvaluationError(f"none of the {len(sentences)} sentences fits the model's length limit ({limit} tokens)")
    ids = ids[:, : int((ids != pad).sum(1).max()) + 1]  # no wider than the longest sentence
    with eval_mode(model):
        return nll_on(model, ids, eos, batch_size, temperature), dropped


def reverse_lm_nll(samples: list[str], references: list[str], steps: int = 1000, seed: int = 0) -> float:
    """Train a fresh MLE generator on the samples and return its NLL on the references.

    A generator that drops modes leaves the references poorly covered, and this number high.
    """
    import contextlib
    import io

    from .recipes.mle import MLEConfig
    from .recipes.mle import main as train_mle

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "samples.txt").write_text("\n".join(samples) + "\n", encoding="utf-8")
        (Path(tmp) / "references.txt").write_text("\n".join(references) + "\n", encoding="utf-8")
        config = MLEConfig(data=str(Path(tmp) / "samples.txt"), valid_file=str(Path(tmp) / "references.txt"),
                           out_dir=str(Path(tmp) / "run"), steps=steps, seed=seed, eval_every=steps + 1,
                           checkpoint_every=steps + 1, eval_samples=16, print_samples=0,
                           max_length=max(len(s.split()) for s in samples + references))
        config.check()
        with contextlib.redirect_stdout(io.StringIO()):
            result = train_mle(config)
    return result["eval/nll_valid"]


def score(
    samples: list[str],
    metrics: list[str],
    *,
    references: list[str] | None = None,
    train: list[str] | None = None,
    orders: tuple[int, ...] = (2, 3, 4, 5),
    lm=None,
    oracle=None,
    grammar=None,
    encoder=None,
    reverse_lm_steps: int = 1000,
) -> dict[str, float]:
    """Compute the named metrics of a sample set (``metrics``: names of :data:`ALL_METRICS`, as a list or
    comma-separated). ``lm`` is a (model, tokenizer) pair.

    Self-BLEU needs two samples: with one, ``self-bleu-n`` is left out of the result (``textgan evaluate``
    says so, or refuses where ``--metrics`` asked for it)."""
    for name, value in (("samples", samples), ("references", references), ("train", train)):
        check_sentences(value, name)
    metrics = parse_metrics(metrics)  # a misspelt name used to be skipped, its scores missing from the result
    check_orders(orders)
    if not samples:
        raise EvaluationError("no samples to score")
    given = {"references": references, "train": train, "lm": lm, "oracle": oracle}
    for name in metrics:
        if name in NEEDS and not given[NEEDS[name]]:
            raise EvaluationError(f"metric {name} needs --{NEEDS[name]}")
    out: dict[str, float] = {"samples": len(samples)}
    if "bleu" in metrics:
        out |= {f"bleu-{n}": v for n, v in bleu(samples, references, orders).items()}
    if "self-bleu" in metrics and len(samples) > 1:
        out |= {f"self-bleu-{n}": v for n, v in self_bleu(samples, orders).items()}
    if "distinct" in metrics:
        out |= {f"distinct-{n}": text_metrics.distinct_n(samples, n) for n in (1, 2, 3, 4)}
    if "unique" in metrics:
        out["unique"] = text_metrics.unique_rate(samples)
    if "copied" in metrics:
        out["copied"] = text_metrics.copy_rate(samples, set(train))
    if "lm" in metrics:
        out["lm-nll"], out["lm-dropped"] = sentences_nll(*lm, samples)
    if "nll-oracle" in metrics:
        from .oracle import from_text

        tokens, dropped = from_text(samples, vocab_size=oracle.vocab_size)
        out["nll-oracle"] = oracle.nll(tokens) if len(tokens) else math.inf
        out["oracle-dropped"] = dropped
    if "grammar" in metrics:
        scores = text_metrics.grammar_scores(samples, grammar)  # None: the embedded grammar
        out["grammatical"], out["grammar-nll"] = scores["grammatical"], scores["grammar_nll"]
    if "fed" in metrics:
        from .fed import fed, load_encoder

        out |= fed(samples, references, encoder or load_encoder())
    if "reverse-lm" in metrics:
        out["reverse-lm-nll"] = reverse_lm_nll(samples, references, reverse_lm_steps)
    return out


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of metric dicts (one row each)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if v is None:  # a score with no value (sweep.json's null for inf)
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3f}" if math.isfinite(v) else str(v)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


SWEEP_STATE = "sweep.state.json"


def sweep(
    models: dict[str, str],
    temperatures: list[float],
    n: int,
    out_dir: str | Path,
    *,
    metrics: list[str],
    references: list[str] | None = None,
    valid: list[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
    inputs: dict | None = None,
    **score_kwargs,
) -> list[dict]:
    """Sample ``n`` sentences from each model at each temperature and score them.

    ``valid``: held-out text for ``nll-test`` at each temperature (the model's NLL with its
    logits divided by T, as Caccia et al.). Writes ``samples/<label>_T<t>.txt`` and
    ``sweep.json`` under ``out_dir``, a row at a time; returns one row per (model, temperature).
    The models sample on ``device``; scoring runs where its own models are.

    ``resume``: keep the rows an interrupted sweep in ``out_dir`` already wrote, where they were
    made from the same inputs: ``sweep.state.json`` records a digest of everything a row depends
    on (n, seed, metrics, device type, the reference / held-out / training sentences, the
    ``inputs`` the caller names, e.g. the files behind an oracle or LM, and the textgan version)
    and one of each model folder's files. A sweep of other inputs is an :class:`EvaluationError`.
    """
    from .checkpoint import lock_folder
    from .models.generator import load_generator, model_digest

    if not isinstance(models, dict):
        raise TypeError(f"models must map labels to model folders, e.g. {{'mle': 'runs/mle'}}; got {models!r}")
    if isinstance(temperatures, (int, float, str)):
        raise TypeError(f"temperatures must be a list of temperatures, e.g. [0.8, 1.0]; got {temperatures!r}")
    if not models or not temperatures:
        raise ValueError(f"a sweep needs at least one model and one temperature; got {len(models)} and "
                         f"{len(temperatures)}")
    for t in temperatures:
        check_settings(t)
    if n < 1:
        raise ValueError(f"a sweep needs n of at least 1 sample a point, got {n}")
    metrics = parse_metrics(metrics)  # before anything is sampled or written
    for name, value in (("references", references), ("valid", valid)):
        check_sentences(value, name)
    out_dir = Path(out_dir)
    setup = _digest({"n": n, "seed": seed, "metrics": metrics, "device": torch.device(device).type,
                     "references": references, "valid": valid, "inputs": inputs or {},
                     "score": {k: v for k, v in score_kwargs.items() if _plain(v)}})
    state = {"setup": setup, "models": {label: model_digest(path) for label, path in models.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    let_go = lock_folder(out_dir, _sweep_in_use)  # two sweeps into one folder would mix their rows
    try:
        done = _resumable_rows(out_dir, state) if resume else {}
        if resume and progress:
            print(f"resuming the sweep in {out_dir}: {len(done)} of {len(models) * len(temperatures)} rows are done",
                  file=sys.stderr)
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
        if not done:  # an earlier sweep's rows must not outlive the state that described them
            write_text_atomic(out_dir / "sweep.json", "[]\n")
        write_text_atomic(out_dir / SWEEP_STATE, json.dumps(state, indent=2) + "\n")
        rows = []
        for label, path in models.items():
            if any((label, t) not in done for t in temperatures):  # a model whose rows are all kept is not loaded
                model, tokenizer = load_generator(path)
                model = model.to(device)
            for t in tqdm(temperatures, desc=f"sweep {label}", disable=not progress):
                if (label, t) in done:
                    rows.append(done[label, t])
                    continue
                texts = sample_texts(model, tokenizer, n, temperature=t, seed=seed, progress=progress)
                write_text_atomic(out_dir / "samples" / f"{label}_T{t:g}.txt", "\n".join(texts) + "\n")
                row = {"model": label, "temperature": t}
                row |= score(texts, metrics, references=references, **score_kwargs)
                if valid:
                    row["nll-test"], _ = sentences_nll(model, tokenizer, valid, temperature=t)
                rows.append(row)
                write_text_atomic(out_dir / "sweep.json", json_text(rows))
        write_text_atomic(out_dir / "sweep.json", json_text(rows))
        return rows
    finally:
        if let_go is not None:
            let_go()


def _sweep_in_use(folder: Path, owner: str) -> EvaluationError:
    return EvaluationError(f"{folder} is in use by another sweep or run{f' (process {owner})' if owner else ''}; "
                           "wait for it to end or stop it, or give another --output")


def _resumable_rows(out_dir: Path, state: dict) -> dict[tuple[str, float], dict]:
    """The rows of an earlier sweep in ``out_dir`` that a sweep of ``state`` can keep, by (model, temperature)."""
    try:
        before = json.loads((out_dir / SWEEP_STATE).read_text(encoding="utf-8"))
        rows = json.loads((out_dir / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # nothing to resume (or a sweep interrupted before its first row): start afresh
    if before.get("setup") != state["setup"]:
        raise EvaluationError(f"{out_dir} holds a sweep of other inputs (-n, --seed, metrics, device or the files "
                              "it reads differ); give another --output, or drop --resume to start it over")
    changed = [label for label in state["models"] if label in before.get("models", {})
               and before["models"][label] != state["models"][label]]
    if changed:
        raise EvaluationError(f"{out_dir}: model {changed[0]!r} has changed since its rows were written; give another "
                              "--output, or drop --resume to start it over")
    kept = [row for row in rows if isinstance(row, dict) and row.get("model") in state["models"]]
    return {(row["model"], row["temperature"]): row for row in kept
            if (out_dir / "samples" / f"{row['model']}_T{row['temperature']:g}.txt").is_file()}


def _plain(value) -> bool:
    """A scoring option that is its own fingerprint (a number, a name, a list of sentences), not a loaded object."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (str, int, float)) for v in value)
    return value is None or isinstance(value, (str, int, float))


def _digest(value) -> str:
    """SHA-256 of a JSON-able value (lists of sentences included), with textgan's version."""
    import hashlib

    from . import __version__

    return hashlib.sha256(json.dumps([__version__, value], sort_keys=True, default=str).encode()).hexdigest()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_sweep(rows: list[dict], x: str, y: str, path: str | Path, title: str = "", baselines: dict | None = None) -> Path:
    """One curve per model through its temperatures, ``x`` against ``y``; ``baselines``: label -> (x, y) points."""
    for axis in (x, y):  # a misspelt axis drew an empty plot
        if not any(axis in row for row in rows):
            held = sorted({key for row in rows for key in row} - {"model", "temperature"})
            raise EvaluationError(f"no sweep row holds {axis!r}" + (f"; they hold {', '.join(held)}" if rows else
                                                                    " (there are no rows)"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label in dict.fromkeys(r["model"] for r in rows):
        points = [r for r in rows if r["model"] == label and _finite(r.get(x)) and _finite(r.get(y))]
        ax.plot([r[x] for r in points], [r[y] for r in points], marker="o", label=label)
        for r in points:
            ax.annotate(f"{r['temperature']:g}", (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for label, (bx, by) in (baselines or {}).items():
        ax.scatter([bx], [by], marker="*", s=120, color="black", label=label, zorder=3)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} against {x} over temperature", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .curves import save_figure

    return save_figure(fig, path, dpi=120)
