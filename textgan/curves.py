"""Training curves: the metrics a run logs to ``metrics.jsonl``, one panel each (``textgan plot``).

A GAN's log is read for its dynamics more than for a final number: whether the discriminator wins
(its accuracies near 1, the reward falling), whether the generator collapses (entropy, sample length
and the evaluations' distinct-4 and unique rates falling together), whether the evaluations still
improve. Every number a run logs is a series over its steps. Training metrics, logged every
``log_every`` steps from one batch each, are noisy: they are drawn faint, with a moving average over
them (TensorBoard's, an exponential average debiased so that it starts at the first value); learning
rates (``.../lr``), schedules, are drawn as they are. Evaluations (``eval/``, ``test/``) are drawn
as points, the run's final one (``metrics.json``) at its last logged step, and a reference value of
the training corpus (``ref/distinct_4`` beside ``eval/distinct_4``) as a dashed line in its panel.
Several runs share the panels, a colour each.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path

from .checkpoint import writing
from .data import read_text

LOG = "metrics.jsonl"
FINAL = "metrics.json"  # a finished run's final evaluation, beside its log
NOT_METRICS = ("step", "time")  # every record's own fields; and timings, "time/...", are no curves
EVALUATIONS = ("eval/", "test/", "ref/")  # logged at evaluation steps only: points, not smoothed

Series = dict[str, tuple[list[int], list[float]]]  # metric -> (steps, values)


class CurvesError(ValueError):
    """A run's log or a plotting option cannot be used; the message says what to do."""


def log_of(path: str | Path) -> Path:
    """The ``metrics.jsonl`` of a run folder, or ``path`` itself where it names a file."""
    if not str(path).strip():
        raise CurvesError("no run was named (an empty path); give a run folder (its out_dir), e.g. runs/scratchgan")
    path = Path(path)
    if path.is_dir():
        if (path / LOG).is_file():
            return path / LOG
        if (path / "config.yaml").is_file():  # a run that has not logged yet
            raise CurvesError(f"{path}: no metrics logged yet (a run logs every log_every steps); plot it once it has "
                              "trained that far")
        parent = path.resolve().parent  # a run's exported model, say: the run is the folder above
        hint = any((parent / name).is_file() for name in (LOG, "config.yaml"))
        raise CurvesError(f"{path} holds no {LOG}; give a textgan run folder (its out_dir)"
                          + (f" (did you mean {path.parent}, the run it belongs to?)" if hint else ""))
    if not path.exists():
        raise CurvesError(f"{path}: no such run folder or file; give a run folder (its out_dir), e.g. runs/scratchgan")
    return path


def read_log(path: str | Path) -> tuple[Series, int]:
    """The series of a ``metrics.jsonl``: metric -> (steps, values), in the order first logged, and the number
    of lines that are not records (the last line of a run killed while it wrote, which its resumption drops).
    Values that are not finite become NaN (a gap in the curve); fields that are not numbers are left out.
    ``path``: the log, or its run folder (:func:`log_of`)."""
    path = log_of(path)
    series: Series = {}
    records, skipped = _records(path)
    for step, record in records:
        _add(series, step, record)
    if not series:
        raise CurvesError(f"{path}: no metrics logged yet (a run logs every log_every steps); plot it once it has "
                          "trained that far")
    _add_final(series, Path(path))
    return series, skipped


def _records(path: str | Path) -> tuple[list[tuple[int, dict]], int]:
    """The records of a ``metrics.jsonl`` with their steps, and the number of non-blank lines that are not one."""
    records, skipped = [], 0
    for line in read_text(path).splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records.append((int(record["step"]), record))
        except (ValueError, KeyError, TypeError, IndexError):
            skipped += 1
    return records, skipped


def minutes_at(path: str | Path) -> dict[int, float]:
    """The minutes a run had trained at each step it logged: the ``time`` of the step's first record (seconds
    since its process started the run), carried over resumptions. A resumed process starts its clock again, so
    where a record's time is below the one before it, the time before is added to all that follows; the time
    between a crashed process's last record and the crash is lost."""
    clock: dict[int, float] = {}
    offset = last = 0.0
    for step, record in _records(path)[0]:
        try:
            seconds = float(record["time"])
        except (ValueError, KeyError, TypeError):
            continue
        if not math.isfinite(seconds):
            continue
        if seconds < last:
            offset += last
        last = seconds
        clock.setdefault(step, (offset + seconds) / 60)
    return clock


def _add(series: Series, step: int, record: dict) -> None:
    """Append the numbers of one record at ``step``; a non-finite value as NaN (null in metrics.json)."""
    for name, value in record.items():
        if name in NOT_METRICS or name.startswith("time/") or isinstance(value, bool):
            continue
        if value is None or isinstance(value, (int, float)):
            steps, values = series.setdefault(name, ([], []))
            steps.append(step)
            values.append(float(value) if value is not None and math.isfinite(value) else math.nan)


def _add_final(series: Series, log: Path) -> None:
    """A finished run's final evaluation, its ``metrics.json``, at its last logged step: the recipes evaluate once
    more when they finish, and write that only there. Left out where the file is older than the log (a finished
    run resumed for more steps has not written its new one yet) or is not a record."""
    final = log.with_name(FINAL)
    if log.name != LOG or not final.is_file() or final.stat().st_mtime_ns < log.stat().st_mtime_ns:
        return
    try:
        record = json.loads(final.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return
    if not isinstance(record, dict):
        return
    last = max(steps[-1] for steps, _ in series.values())
    _add(series, last, {name: value for name, value in record.items()
                        if name not in series or series[name][0][-1] < last})  # not twice at one step


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: the exponential moving average ``a = weight * a + (1 - weight) * v``, divided by
    ``1 - weight ** n`` after n values so that it starts at the first value and not at 0. NaNs stay gaps and do
    not count. ``weight`` 0 gives the values back."""
    if not 0 <= weight < 1:
        raise CurvesError(f"the smoothing weight must be in [0, 1), got {weight}")
    out, average, count = [], 0.0, 0
    for value in values:
        if math.isnan(value):
            out.append(math.nan)
            continue
        count += 1
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**count))
    return out


def select(names: list[str], wanted: str) -> list[str]:
    """The metrics among ``names`` that ``wanted`` asks for: comma-separated names (``disc/real_acc``) or groups
    (``disc``, ``disc/``: every metric whose name starts with ``disc/``), in the order asked; every name where
    ``wanted`` is empty. An entry that matches nothing is an error naming the closest name or group."""
    if not wanted.strip():
        return list(names)
    groups = list(dict.fromkeys(name.split("/", 1)[0] for name in names if "/" in name))
    chosen: list[str] = []
    for entry in (part.strip() for part in wanted.split(",")):
        if not entry:
            continue
        group = entry.rstrip("/")
        matched = [entry] if entry in names else [n for n in names if n.startswith(group + "/")]
        if not matched:
            close = difflib.get_close_matches(entry, names + groups, n=1)
            raise CurvesError(f"no metric or group {entry!r} in the log" + (f" (did you mean {close[0]!r}?)" if close
                              else "") + f"; choose from the groups {', '.join(groups)} or names such as "
                              f"{', '.join(names[:4])}")
        chosen += [name for name in matched if name not in chosen]
    if not chosen:
        raise CurvesError("--metrics names no metric; give names or groups separated by commas, e.g. disc,eval")
    return chosen


def check_image_path(path: str | Path) -> None:
    """``path``'s suffix is an image format matplotlib writes (.png, .pdf, .svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise CurvesError(f"cannot draw {path}: " + (f"'.{suffix}' is not an image format" if suffix else
                          "it has no file extension") + "; name a .png, .pdf or .svg file")


def _counterpart(name: str) -> str | None:
    """The corpus's reference value of an evaluation and the evaluation of a reference value (``eval/distinct_4``
    <-> ``ref/distinct_4``), drawn in one panel; None for other metrics."""
    for prefix, other in (("eval/", "ref/"), ("ref/", "eval/")):
        if name.startswith(prefix):
            return other + name[len(prefix):]
    return None


def plot_curves(runs: dict[str, Series], path: str | Path, metrics: list[str] | str = "", smooth: float = 0.6,
                title: str = "", clocks: dict[str, dict[int, float]] | None = None) -> Path:
    """Draw ``metrics`` of each run (label -> :func:`read_log` series) over steps, a panel each, into ``path``,
    written whole or not at all (a temporary file beside it, then renamed). -> ``path``.

    ``metrics``: names or groups (``disc`` for every ``disc/...``), as a list or comma-separated as ``textgan plot
    --metrics`` takes them (:func:`select`); empty, every metric the runs logged. With ``clocks`` (label ->
    :func:`minutes_at`) the x axis is minutes of training instead: runs of recipes whose steps cost differently
    (an MLE step and a GAN step) compared at equal compute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_image_path(path)
    if not runs:
        raise CurvesError("no runs to draw; give label -> read_log(run)[0] for at least one run")
    smoothed([], smooth)  # the weight is checked even where no panel smooths
    names = list(dict.fromkeys(name for series in runs.values() for name in series))
    metrics = select(names, metrics if isinstance(metrics, str) else ",".join(metrics))  # unknown: an error
    panels = [name for name in metrics if not (name.startswith("ref/") and _counterpart(name) in metrics)]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.5 * rows + 0.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def x_of(label: str, steps: list[int]) -> list[float]:
        return steps if clocks is None else [clocks[label].get(step, math.nan) for step in steps]

    for ax, name in zip(axes.flat, panels):
        reference = _counterpart(name) if name.startswith("eval/") else None
        for i, (label, series) in enumerate(runs.items()):
            colour = colours[i % len(colours)]
            if name in series:
                steps, values = x_of(label, series[name][0]), series[name][1]
                if name.startswith(EVALUATIONS) or smooth == 0 or len(values) < 2:
                    ax.plot(steps, values, color=colour, marker="o", markersize=3, linewidth=1.2, label=label)
                elif name.endswith("/lr"):  # a schedule, not a noisy measurement: as it is
                    ax.plot(steps, values, color=colour, linewidth=1.5, label=label)
                else:
                    ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                    ax.plot(steps, smoothed(values, smooth), color=colour, linewidth=1.5, label=label)
            if reference in series and reference in metrics:
                ax.plot(x_of(label, series[reference][0]), series[reference][1], color=colour, linestyle="--",
                        linewidth=1.0, alpha=0.8)
        shown = f"{name}  (dashed: {reference})" if any(reference in s for s in runs.values()) and reference in metrics \
            else name
        ax.set_title(shown, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[: len(panels)]):
        if i + columns >= len(panels):  # the lowest panel of its column
            ax.set_xlabel("minutes of training" if clocks is not None else "step", fontsize=8)
    if len(runs) > 1:  # one legend for the figure, with every run (some may lack the first panel's metric)
        legend = {}
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(legend.values(), legend.keys(), loc="upper center", ncol=min(len(legend), 6), fontsize=8,
                   frameon=False)
    elif title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int) -> Path:
    """Save and close ``fig``: written beside ``path`` and renamed into place, so the image is whole or the one
    before; a disk that refuses the write is an OSError naming ``path`` (:func:`textgan.checkpoint.writing`)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # its suffix keeps the format
    try:
        with writing(path):
            fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
