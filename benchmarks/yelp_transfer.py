"""Yelp sentiment transfer (neg <-> pos) on the 1,000 test sentences of Li et al. (2018).

    python benchmarks/yelp_transfer.py             # trains what is missing (judge, LM, rewriter), then scores
    python benchmarks/yelp_transfer.py --quick     # a smoke run on a slice of the data, tiny models, not recorded

Per direction and overall: style accuracy by the project's classifier (a CNN trained on Yelp
train by ``textgan.recipes.classifier``; a different judge from the fastText classifier of the
papers, so accuracies are not comparable across judges), self-BLEU (corpus BLEU-4 of the
outputs against their inputs) and ref-BLEU (against the one human rewrite), both by
``sacrebleu.corpus_bleu(..., tokenize='none')`` on the tokenized lower-case text (and checked
equal to ``textgan.bleu.corpus_bleu``), perplexity under an MLE language model trained on Yelp
train, the geometric mean of accuracy (%) and ref-BLEU, and the copy rate.

Two reference rows are computed, not copied from papers: copying the input, and the human
rewrites themselves. Published systems' BLEU (same definitions, same test set, 2.4 times our
training data) are printed beside ours. Writes benchmarks/results/yelp_transfer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from _pipeline import run_logged
from _record import record

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "yelp"
PRESET = Path(__file__).resolve().parents[1] / "recipes" / "yelp_transfer.yaml"
PUBLISHED = [  # (system, self-BLEU, ref-BLEU): Yelp test set, corpus BLEU-4, as quoted in the benchmark issue
    ("DualRL (Luo et al. 2019)", 59.0, 28.8),
    ("Style Transformer, multi-class (Dai et al. 2019)", 63.1, 29.2),
    ("Style Transformer, conditional (Dai et al. 2019)", 53.3, 25.4),
    ("UnsuperMT (Zhang et al. 2018)", 46.4, 23.5),
    ("DeleteAndRetrieve (Li et al. 2018)", 36.7, 16.6),
    ("CrossAligned (Shen et al. 2017)", 20.7, 9.4),
]
QUICK = {
    "classifier": ["steps=60", "eval_every=1000"],
    "lm": ["steps=30", "d_model=32", "n_layers=1", "eval_every=1000", "eval_samples=32"],
    "transfer": ["steps=30", "warmup_steps=20", "d_model=32", "n_layers=1", "batch_size=16", "eval_every=1000",
                 "eval_sentences=16", "checkpoint_every=1000"],
}


def ensure_judge(classifier: Path, data: Path, work: Path, extra: list[str] = (), quick: bool = False) -> float | None:
    """Train the judge (textgan.recipes.classifier on Yelp train) unless ``classifier`` holds one:
    its training seconds, or None when it was there already."""
    if (classifier / "classifier.json").is_file():
        return None
    work.mkdir(parents=True, exist_ok=True)
    return run_logged("classifier", [f"data={data}", f"out_dir={classifier.parent}", "steps=4000", *extra],
                      work / "classifier.log", quick)


def work_paths(args) -> None:
    """Where :func:`prepare` keeps the judge, the language model and the rewriter: under ``args.work`` (its
    ``_quick`` sibling under ``--quick``), for each of ``args.classifier``, ``args.lm`` and ``args.model`` not
    given."""
    if args.quick:
        args.work = args.work.with_name(args.work.name + "_quick")
    args.model = args.model or args.work / "transfer" / "model"
    args.classifier = args.classifier or args.work / "classifier" / "classifier"
    args.lm = getattr(args, "lm", None) or args.work / "lm" / "generator"


def prepare(args) -> dict[str, float]:
    """Train the judge, the language model and the rewriter where they do not exist yet."""
    seconds = {}
    work, data = args.work, args.data
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:  # a slice of the data
        sliced = work / "data"
        sliced.mkdir(exist_ok=True)
        for style in ("neg", "pos"):
            for split, n in (("train", 3000), ("dev", 100), ("test", 50), ("reference", 50)):
                lines = (data / f"{split}.{style}").read_text(encoding="utf-8").splitlines()[:n]
                (sliced / f"{split}.{style}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = args.data = sliced
    quick = QUICK if args.quick else {"classifier": [], "lm": [], "transfer": []}
    judge_seconds = ensure_judge(args.classifier, data, work, quick["classifier"], args.quick)
    if judge_seconds is not None:
        seconds["classifier"] = judge_seconds
    if not (args.lm / "config.json").is_file():
        train = work / "lm_train.txt"
        valid = work / "lm_valid.txt"
        for split, path in (("train", train), ("dev", valid)):
            path.write_text("".join((data / f"{split}.{s}").read_text(encoding="utf-8") for s in ("neg", "pos")),
                            encoding="utf-8")
        seconds["lm"] = run_logged("mle", [f"data={train}", f"valid_file={valid}", f"out_dir={args.lm.parent}",
                                           "max_length=20", "d_model=128", "n_layers=2", "steps=2000",
                                           "batch_size=128", "lr=1e-3", "eval_every=1000", "checkpoint_every=1000",
                                           *quick["lm"]],
                                   work / "lm.log", args.quick)
    if not (args.model / "transfer.json").is_file():
        seconds["transfer"] = run_logged("style_transfer", [str(PRESET), f"data={data}",
                                                            f"out_dir={args.model.parent}",
                                                            f"classifier={args.classifier}", *quick["transfer"]],
                                         work / "transfer.log", args.quick)
    return seconds


def score_direction(outputs, inputs, references, target, classify, perplexity) -> dict:
    import sacrebleu

    from textgan.bleu import corpus_bleu

    self_bleu = sacrebleu.corpus_bleu(outputs, [inputs], tokenize="none", force=True).score
    ref_bleu = sacrebleu.corpus_bleu(outputs, [references], tokenize="none", force=True).score
    for ours, theirs in ((corpus_bleu(outputs, inputs), self_bleu), (corpus_bleu(outputs, references), ref_bleu)):
        assert abs(ours - theirs) < 1e-9, (ours, theirs)  # textgan's corpus BLEU is sacreBLEU's
    accuracy = sum(p == target for p in classify(outputs)) / len(outputs)
    return {"accuracy": 100 * accuracy, "self_bleu": self_bleu, "ref_bleu": ref_bleu,
            "geo_mean": math.sqrt(100 * accuracy * ref_bleu), "perplexity": perplexity(outputs),
            "copy": 100 * sum(o == i for o, i in zip(outputs, inputs)) / len(outputs), "n": len(outputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=SHARED, help="the Yelp folder (train/dev/test/reference .neg/.pos)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_yelp"), help="where the judge, LM and logs are kept")
    parser.add_argument("--model", type=Path, default=None, help="style-transfer model (default: WORK/transfer/model)")
    parser.add_argument("--classifier", type=Path, default=None, help="judge (default: WORK/classifier/classifier)")
    parser.add_argument("--lm", type=Path, default=None, help="MLE language model (default: WORK/lm/generator)")
    parser.add_argument("--decoding", default="greedy", choices=("greedy", "beam", "sample", "rerank"))
    parser.add_argument("--beam", type=int, default=4, help="beam width for beam and rerank decoding")
    parser.add_argument("--style-weight", type=float, default=None, help="rerank: weight of log D (default: the model's)")
    parser.add_argument("--content-weight", type=float, default=None, help="rerank: weight of the cycle (default: the model's)")
    parser.add_argument("--overlap-weight", type=float, default=None,
                        help="rerank: weight of the minimal-edit term (default: the model's, 0 unless set)")
    parser.add_argument("--copy-bias", type=float, default=None,
                        help="rerank: beam search's bonus for the source's words (default: the model's, 0 unless set)")
    parser.add_argument("--lm-style-weight", type=float, default=None,
                        help="rerank: weight of the model's style-LM ratio (default: the model's, 0 unless set)")
    parser.add_argument("--allow-copy", action="store_true", help="rerank: let a rewrite equal its input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="yelp_transfer", help="results file name: benchmarks/results/NAME.{json,md}")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: {args.data} not found; pass --data with the Yelp folder")
    if args.beam < 1:
        sys.exit(f"error: --beam must be at least 1, got {args.beam}")
    work_paths(args)
    seconds = prepare(args)

    from textgan.evaluation import sentences_nll
    from textgan.models.classifier import classify, load_classifier
    from textgan.models.generator import load_generator
    from textgan.transfer import Rewriter, load_style_data

    data = load_style_data(args.data)
    judge, judge_tokenizer, info = load_classifier(args.classifier)
    lm, lm_tokenizer = load_generator(str(args.lm))
    rewriter = Rewriter.load(args.model)
    try:
        rewriter.set_rerank(style_weight=args.style_weight, content_weight=args.content_weight,
                            overlap_weight=args.overlap_weight, copy_bias=args.copy_bias,
                            lm_style_weight=args.lm_style_weight, allow_copy=args.allow_copy or None)
    except ValueError as e:
        sys.exit(f"error: {e}")

    def perplexity(sentences):
        kept = [s for s in sentences if s.strip()]
        return math.exp(sentences_nll(lm, lm_tokenizer, kept)[0]) if kept else float("nan")

    def classify_as(sentences):
        return classify(judge, judge_tokenizer, sentences, info["labels"])

    rows: dict[str, dict] = {}
    outputs_all: dict[str, list[str]] = {}
    started = time.time()
    for source, target in (("neg", "pos"), ("pos", "neg")):
        inputs, references = data.test[source], data.references[source]
        outputs = rewriter.rewrite(inputs, source, target, decoding=args.decoding, beam=args.beam, seed=args.seed,
                                   progress=True)
        outputs_all[f"{source}->{target}"] = outputs
        rows[f"textgan {source}->{target}"] = score_direction(outputs, inputs, references, target, classify_as, perplexity)
        rows[f"copy input {source}->{target}"] = score_direction(inputs, inputs, references, target, classify_as, perplexity)
        rows[f"human {source}->{target}"] = score_direction(references, inputs, references, target, classify_as, perplexity)
    transfer_s = round(time.time() - started, 1)
    for name in ("textgan", "copy input", "human"):  # overall: both directions as one corpus of 1,000
        outputs = (outputs_all["neg->pos"] if name == "textgan" else data.test["neg"] if name == "copy input"
                   else data.references["neg"])
        outputs = outputs + (outputs_all["pos->neg"] if name == "textgan" else data.test["pos"] if name == "copy input"
                             else data.references["pos"])
        inputs = data.test["neg"] + data.test["pos"]
        references = data.references["neg"] + data.references["pos"]
        targets = ["pos"] * len(data.test["neg"]) + ["neg"] * len(data.test["pos"])
        overall = score_direction(outputs, inputs, references, "pos", classify_as, perplexity)
        overall["accuracy"] = 100 * sum(p == t for p, t in zip(classify_as(outputs), targets)) / len(outputs)
        overall["geo_mean"] = math.sqrt(overall["accuracy"] * overall["ref_bleu"])
        rows[f"{name} overall"] = overall

    metrics = json.loads((args.model.parent / "metrics.json").read_text()) if (args.model.parent / "metrics.json").is_file() else {}
    results = {"rows": rows, "decoding": args.decoding, "beam": args.beam, "style_weight": rewriter.style_weight,
               "content_weight": rewriter.content_weight, "overlap_weight": rewriter.overlap_weight,
               "copy_bias": rewriter.copy_bias, "lm_style_weight": rewriter.lm_style_weight,
               "allow_copy": rewriter.allow_copy, "seed": args.seed,
               "model": str(args.model),
               "judge_dev_accuracy": info.get("dev_accuracy"), "train_seconds": seconds,
               "transfer_run_seconds": metrics.get("time/total_s"), "rewrite_seconds": transfer_s,
               "examples": {k: list(zip(data.test[k[:3]][:10], v[:10])) for k, v in outputs_all.items()}}
    header = "| system | direction | accuracy (ours) | self-BLEU | ref-BLEU | G(acc, ref) | PPL | copy |\n|---|---|---|---|---|---|---|---|\n"
    lines = []
    for key, row in rows.items():
        name, direction = key.rsplit(" ", 1)
        lines.append(f"| {name} | {direction} | {row['accuracy']:.1f}% | {row['self_bleu']:.1f} | {row['ref_bleu']:.1f} | "
                     f"{row['geo_mean']:.1f} | {row['perplexity']:.0f} | {row['copy']:.1f}% |")
    published = "\n".join(f"| {name} | overall | (fastText judge) | {s:.1f} | {r:.1f} | | | |" for name, s, r in PUBLISHED)
    table = header + "\n".join(sorted(lines, key=lambda l: ("overall" not in l, l))) + "\n" + published + "\n"
    print(table)
    if args.quick:
        print("(--quick: a smoke run on a slice of the data; not recorded)")
        return
    judge_note = (f"\nStyle accuracy is judged by textgan's CNN classifier (dev accuracy {100 * (info.get('dev_accuracy') or 0):.1f}%), "
                  "not the papers' fastText classifier: published systems' accuracies are not comparable and are left out.\n")
    decoding = args.decoding + {"beam": f", beam {args.beam}",
                                "rerank": f", beam {args.beam}, style weight {rewriter.style_weight:g}, content weight "
                                          f"{rewriter.content_weight:g}"
                                          + (f", overlap weight {rewriter.overlap_weight:g}" if rewriter.overlap_weight else "")
                                          + (f", copy bias {rewriter.copy_bias:g}" if rewriter.copy_bias else "")
                                          + (f", LM style weight {rewriter.lm_style_weight:g}"
                                             if rewriter.lm_style_weight else "")
                                          + (", copies allowed" if rewriter.allow_copy else "")
                                }.get(args.decoding, "")
    record(args.name, results, f"# Yelp sentiment transfer (test set, 500 + 500 sentences; {decoding} decoding)\n\n"
           + table + judge_note)


if __name__ == "__main__":
    main()
