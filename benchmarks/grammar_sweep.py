"""The default recipes on the embedded grammar, swept over temperature: exact quality-diversity curves.

    python benchmarks/grammar_sweep.py                 # trains mle, scratchgan, seqgan (and two seqgan controls)
    python benchmarks/grammar_sweep.py --run scratchgan=runs/scratchgan    # sweep an existing default run instead
    python benchmarks/grammar_sweep.py --run entropy=runs/ent --name grammar_sweep_entropy  # another run beside them
    python benchmarks/grammar_sweep.py --seed 1        # the same with seed 1 (runs and results named _seed1)
    python benchmarks/grammar_sweep.py --run mle-decay=runs/mle_decay --baseline mle-decay   # against another MLE
    python benchmarks/grammar_sweep.py --quick         # a smoke run

One temperature is one point of a trade-off, and comparing points misleads (Caccia et al., "Language
GANs Falling Short"). The grammar scores every sample exactly, so here the curves are exact: quality
is the grammatical rate of the samples, coverage the model's NLL on held-out grammar sentences at the
same temperature (the sentences the runs' final evaluations used; every run has the same seed). Each GAN
point is set against MLE's curve at the same grammatical rate (interpolated along MLE's undominated
points), so that a GAN is said to win or lose at equal quality; seqgan-mle, SeqGAN's generator before
its adversarial steps, shows what those steps do to the curve of their MLE start, and seqgan-mle-1100
what 100 more MLE steps would have done instead. Runs are kept in
runs/bench_grammar_sweep[_seedN]/ and reused unless --retrain (or stopped where their settings changed).
Writes benchmarks/results/grammar_sweep[_seedN].{json,md,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from _pipeline import IGNORED, ROOT, check_reusable, plan_run, run_recipe, seeded
from _record import RESULTS, record
from grammar_recipes import QUICK

from textgan.evaluation import plot_sweep, sweep
from textgan.training import grammar_run_valid, run_config

# each model: its recipe, and what it changes in the recipe's defaults
MODELS = {
    "mle": ("mle", []),
    "scratchgan": ("scratchgan", []),
    "seqgan": ("seqgan", []),
    # SeqGAN's generator before its adversarial steps: its MLE pretraining alone (the same weights, bit for bit),
    # so that the adversarial steps' own effect shows beside the MLE recipe's
    "seqgan-mle": ("seqgan", ["steps=0", "disc_pretrain_steps=0"]),
    # and with 100 more MLE steps in place of the 100 adversarial ones: what SeqGAN's steps gain over more MLE
    "seqgan-mle-1100": ("seqgan", ["pretrain_steps=1100", "steps=0", "disc_pretrain_steps=0"]),
}
TEMPERATURES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)


def frontier(points: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """The undominated (grammatical, nll, temperature) points, by grammatical rate: none has another at
    least as grammatical with a lower NLL, or more grammatical with the same."""
    return sorted(p for p in points if not any(q[:2] != p[:2] and q[0] >= p[0] and q[1] <= p[1] for q in points))


def at_equal_quality(curve: list[tuple[float, float, float]], grammatical: float) -> tuple[float, str] | None:
    """The lowest NLL that ``curve`` (frontier points, by grammatical rate) reaches at a grammatical rate of at
    least ``grammatical``, interpolated linearly between its points, and a note: empty inside the curve's
    range, naming the point used below it (more grammatical, and lower). None above the curve's range."""
    if not curve or grammatical > curve[-1][0]:
        return None
    if grammatical < curve[0][0]:
        return curve[0][1], f"its T={curve[0][2]:g} point, at {curve[0][0]:.3f} grammatical"
    for (g0, n0, _), (g1, n1, _) in itertools.pairwise(curve):
        if g0 <= grammatical <= g1:
            return (n0 if g1 == g0 else n0 + (n1 - n0) * (grammatical - g0) / (g1 - g0)), ""
    return curve[0][1], ""  # a one-point curve at exactly this rate


def train(model: str, out: Path, seed: int, quick: bool, retrain: bool) -> None:
    """Train ``model`` (of :data:`MODELS`) with ``seed`` into ``out`` unless its exported generator is there,
    trained with the settings the benchmark uses now."""
    recipe, changes = MODELS[model]
    overrides = [f"out_dir={out}", f"seed={seed}"]
    if quick:  # a few steps of each; seqgan-mle-1100's longer MLE would be most of a smoke run
        overrides += QUICK["mle"] + (QUICK[recipe] if recipe != "mle" else [])
        changes = [change for change in changes if not change.startswith("pretrain_steps=")]
    overrides = plan_run(recipe, out, [*overrides, *changes], retrain)
    if overrides is None:
        print(f"{model}: reusing {out}", flush=True)
        return
    run_recipe(recipe, overrides, out, in_process=quick)


def differences(config: dict, defaults: dict[str, dict]) -> tuple[str, dict]:
    """The default run ``config`` is closest to, and the settings in which it differs (those that change what a
    run trains: not :data:`_pipeline.IGNORED`)."""
    def changes(base: dict) -> dict:
        return {k: v for k, v in config.items() if k not in IGNORED and base.get(k) != v}

    base = min(defaults, key=lambda label: len(changes(defaults[label])))
    return base, changes(defaults[base])


def display_name(label: str) -> str:
    """How the tables name a baseline: MLE for the benchmark's own mle run, else its label."""
    return "MLE" if label == "mle" else label


def markdown(rows: list[dict], comparison: list[dict], n: int, held_out: int, entropy: float, trained_s: dict,
             name: str = "grammar_sweep", extra: dict | None = None, seed: int = 0, baseline: str = "mle") -> str:
    base = display_name(baseline)  # whose curve the other points are set against
    lines = ["| model | T | grammatical | NLL under grammar | nll-test | distinct-4 | self-bleu-4 | unique |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['temperature']:.1f} | {r['grammatical']:.3f} | {r['grammar-nll']:.3f} | "
                     f"{r['nll-test']:.3f} | {r['distinct-4']:.3f} | {r['self-bleu-4']:.3f} | {r['unique']:.3f} |")
    versus = [(f"| GAN point | grammatical | its nll-test | {base}'s nll-test at that grammatical rate or more "
               f"| GAN minus {base} |"),
              "|---|---:|---:|---:|---:|"]
    for c in comparison:
        if c["mle_nll"] is None:
            mle, diff = f"none: {c['mle_note']}", ""
        else:
            mle = f"{c['mle_nll']:.3f}" + (f" ({c['mle_note']})" if c["mle_note"] else "")
            diff = f"{c['nll'] - c['mle_nll']:+.3f}"
        versus.append(f"| {c['model']}, T={c['temperature']:.1f} | {c['grammatical']:.3f} | {c['nll']:.3f} | {mle} | {diff} |")
    return ("# The default recipes on the embedded grammar, swept over temperature\n\n"
            f"{n:,} samples per point, scored exactly by the grammar; nll-test is each model's NLL (nats per token, end "
            f"token included) on the {held_out:,} held-out grammar sentences of the runs' own final evaluations, with "
            f"its logits divided by T. The grammar's own NLL on them (its entropy rate, the floor of nll-test) is "
            f"{entropy:.3f}. mle, scratchgan and seqgan are seed {seed} of their recipes' defaults; seqgan-mle "
            "is seqgan's generator before its adversarial steps (its MLE pretraining alone: steps=0, "
            "disc_pretrain_steps=0), and seqgan-mle-1100 the same with 100 more MLE steps (pretrain_steps=1100) in "
            "place of the 100 adversarial ones"
            + "".join(f"; {label} is {base} with {', '.join(f'{k}={v}' for k, v in changes.items()) or 'nothing changed'}"
                      for label, (base, changes) in (extra or {}).items())
            + "; training took "
            + ", ".join(f"{recipe} {seconds / 60:.1f} min" for recipe, seconds in trained_s.items() if seconds)
            + " (each run's own clock).\n\n" + "\n".join(lines) + "\n\n"
            f"## Each GAN point against {base}'s curve at equal quality\n\n"
            f"The lowest nll-test {base}'s curve reaches at the GAN point's grammatical rate or a higher one, "
            f"interpolated linearly between {base}'s undominated points; a negative difference means the GAN covers "
            "held-out text better at that quality.\n\n"
            + "\n".join(versus) + f"\n\n![sweep]({name}.png)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=FOLDER",
                        help="sweep this run folder: for one of the benchmark's own models (a run of its "
                             "settings) instead of training it; under another label as one more model, set against "
                             "MLE's curve like the GANs")
    parser.add_argument("--name", default=None, help="results name (default grammar_sweep, grammar_sweep_seedN)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0)")
    parser.add_argument("--baseline", default="mle", metavar="LABEL",
                        help="the model whose curve every other point is set against (default mle; e.g. a --run "
                             "label for an MLE run with other settings)")
    parser.add_argument("-n", type=int, default=2000, help="samples per temperature (default 2000)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    given = dict(spec.split("=", 1) for spec in args.run)
    if args.baseline not in {*MODELS, *given}:
        raise SystemExit(f"--baseline {args.baseline}: no such model; give one of {', '.join(MODELS)} or a --run label")
    name, folder = seeded("grammar_sweep", args.seed, None)
    args.name = args.name or name
    n, temperatures = (50, (0.8, 1.2)) if args.quick else (args.n, TEMPERATURES)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) if args.quick else ROOT / folder
        runs = {}
        for model, (recipe, changes) in MODELS.items():
            runs[model] = Path(given[model]) if model in given else work / model
            if model in given:  # in place of the benchmark's own run: it must be one
                check_reusable(runs[model], recipe, [f"seed={args.seed}", *changes],
                               f"Sweep it under another label (--run NAME={given[model]})")
            else:
                train(model, runs[model], args.seed, args.quick, args.retrain)
        runs |= {label: Path(folder) for label, folder in given.items() if label not in MODELS}
        held_out = {label: grammar_run_valid(path) for label, path in runs.items()}
        valid = held_out["mle"]
        if valid is None or any(sentences != valid for sentences in held_out.values()):
            raise SystemExit("every run must be a run on the embedded grammar with the same seed and held-out split")
        rows = sweep({recipe: str(path) for recipe, path in runs.items()}, list(temperatures), n, Path(scratch) / "sweep",
                     metrics=["grammar", "distinct", "unique", "self-bleu"], valid=valid, orders=(4,))
        from textgan.grammar import Grammar
        from textgan.metrics import grammar_scores

        entropy = grammar_scores(valid, Grammar.default())["grammar_nll"]
        curve = frontier([(r["grammatical"], r["nll-test"], r["temperature"]) for r in rows
                          if r["model"] == args.baseline])
        comparison = []
        for r in rows:
            if r["model"] != args.baseline:
                mle = at_equal_quality(curve, r["grammatical"])
                comparison.append({"model": r["model"], "temperature": r["temperature"], "grammatical": r["grammatical"],
                                   "nll": r["nll-test"], "mle_nll": mle and mle[0],
                                   "mle_note": mle[1] if mle else f"more grammatical than {display_name(args.baseline)} at T={curve[-1][2]:g}"})
        trained_s = {recipe: json.loads((path / "metrics.json").read_text()).get("time/total_s")
                     for recipe, path in runs.items()}  # each run's own clock, whether trained now or reused
        configs = {label: run_config(path) for label, path in runs.items()}
        extra = {label: differences(configs[label], {model: configs[model] for model in MODELS})
                 for label in runs if label not in MODELS}
        md = markdown(rows, comparison, n, len(valid), entropy, trained_s, args.name, extra, args.seed, args.baseline)
        print(md)
        png = Path(scratch) / f"{args.name}.png" if args.quick else RESULTS / f"{args.name}.png"
        plot_sweep(rows, "grammatical", "nll-test", png, title="Embedded grammar: quality against held-out NLL",
                   baselines={"the grammar": (1.0, entropy)})
        if not args.quick:
            record(args.name, {"runs": {k: str(v) for k, v in runs.items()}, "configs": configs, "trained_s": trained_s,
                                     "rows": rows, "versus_mle": comparison, "baseline": args.baseline,
                                     "grammar_entropy_rate": entropy}, md)


if __name__ == "__main__":
    main()
