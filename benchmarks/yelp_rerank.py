"""Choose rerank decoding's beam width and weights on Yelp *dev*, before the test set is looked at.

    python benchmarks/yelp_rerank.py --model runs/yelp_large_transfer/model
    python benchmarks/yelp_rerank.py --model DIR --beams 4,8 --style-weights 0.5,1,2 --content-weights 0.5,1,2,4
    python benchmarks/yelp_rerank.py --model DIR --beams 16 --overlap-weights 0,1,2,4   # with the minimal-edit term
    python benchmarks/yelp_rerank.py --model DIR --beams 32 --copy-biases 0,1 --overlap-weights 12,16 --lm-style-weights 0,1
    python benchmarks/yelp_rerank.py --quick   # a smoke run: tiny judge and rewriter on a slice of Yelp, not recorded

Rerank decoding keeps, of the beam's K hypotheses y for a source x, the one with the highest
log p(y|x)/|y| + a * log D(target|y) + b * log p(x|y)/|x| + c * overlap(y, x) + d * lm_style(y) among
those that differ from x (a copy is kept only when the beam holds nothing else; ``--allow-copy`` lifts
this; overlap is the mean unigram/bigram F1 of y and x, textgan.transfer.overlap; lm_style is
log p(y | target-style LM) - log p(y | source-style LM) per token under the model's own style LMs,
Rewriter.style_lm_logprob). The run's own weights are a = b = 1, c = d = 0; this script scores every
(K, a, b, c, d) of a grid on the first 500 dev sentences of each style: one beam search per K (and per
``--copy-biases`` value, the beam's bonus for the source's words, 0 by default), then each weighting
is an argmax over the stored terms, and the judge labels every candidate once. Per point: style
accuracy by the judge (the same CNN classifier as benchmarks/yelp_transfer.py), self-BLEU
(corpus BLEU-4 against the inputs) and the copy rate. Dev has no human rewrites, so ref-BLEU
is not available here.

The rule, fixed before running: the point with the highest dev self-BLEU among those whose
dev accuracy is at least ``--min-accuracy`` (default 91.0, the accuracy of the run's own
weights on dev for the d256 rewriter) and copy rate under 5%. Ties go to the smaller beam. The
chosen point is then evaluated once on test with benchmarks/yelp_transfer.py. Writes
benchmarks/results/yelp_rerank_dev.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from _record import record
from yelp_transfer import SHARED, ensure_judge, prepare, work_paths


def numbers(kind):
    """argparse type: a comma-separated list of ``kind`` values, at least one, none negative."""

    def parse(text: str) -> list:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or min(values) < 0 or (kind is int and min(values) < 1):
            raise argparse.ArgumentTypeError(f"expected comma-separated {'positive' if kind is int else 'non-negative'} "
                                             f"numbers, got {text!r}")
        return values

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: trains a tiny judge, language model and rewriter on a slice of Yelp (as "
                             "yelp_transfer.py --quick does, in WORK_quick), scores a small grid, records nothing")
    parser.add_argument("--model", type=Path, default=None,
                        help="style-transfer model folder (with its discriminator); required but with --quick")
    parser.add_argument("--data", type=Path, default=SHARED, help="the Yelp folder")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_yelp"), help="where the judge is kept or trained")
    parser.add_argument("--classifier", type=Path, default=None, help="judge (default: WORK/classifier/classifier)")
    parser.add_argument("--beams", type=numbers(int), default="4,8")
    parser.add_argument("--style-weights", type=numbers(float), default="0.5,1,1.5,2")
    parser.add_argument("--content-weights", type=numbers(float), default="0.5,1,1.5,2,3,4")
    parser.add_argument("--overlap-weights", type=numbers(float), default="0")
    parser.add_argument("--lm-style-weights", type=numbers(float), default="0",
                        help="weights of the model's style-LM ratio (log p(y | target-style LM) - log p(y | source-style "
                             "LM) per token)")
    parser.add_argument("--copy-biases", type=numbers(float), default="0",
                        help="beam search's bonus for the source's words (one beam search per K and bias)")
    parser.add_argument("--sentences", type=int, default=500, help="dev sentences per style")
    parser.add_argument("--min-accuracy", type=float, default=91.0, help="the rule's accuracy floor on dev (%%)")
    parser.add_argument("--allow-copy", action="store_true", help="let rerank choose a copy of the input")
    parser.add_argument("--name", default="yelp_rerank_dev")
    args = parser.parse_args()
    if args.model is None and not args.quick:
        parser.error("--model is required (a style-transfer run's model folder), unless --quick")
    if not args.data.is_dir():
        sys.exit(f"error: {args.data} not found; pass --data with the Yelp folder")
    work_paths(args)  # yelp_transfer.py's folders (WORK_quick under --quick)
    if args.quick:  # yelp_transfer.py --quick's tiny models and data slice, then a small grid
        args.beams, args.style_weights, args.content_weights, args.sentences = [2], [1.0], [0.5, 1.0], 20
        prepare(args)  # trains what is missing; args.data becomes the slice
    else:
        ensure_judge(args.classifier, args.data, args.work)

    import torch

    from textgan.bleu import corpus_bleu
    from textgan.data import DataError
    from textgan.models.classifier import classify, load_classifier
    from textgan.models.generator import ModelError
    from textgan.transfer import Rewriter, load_style_data, rerank_choice

    try:
        data = load_style_data(args.data)
        judge, judge_tokenizer, info = load_classifier(args.classifier)
        rewriter = Rewriter.load(args.model)
        if rewriter.discriminator is None:
            raise ModelError(f"{args.model} has no discriminator.safetensors: rerank needs the run's discriminator")
    except (DataError, ModelError) as e:
        sys.exit(f"error: {e}")
    directions = (("neg", "pos"), ("pos", "neg"))
    inputs = {src: data.dev[src][: args.sentences] for src, _ in directions}
    rows, started = [], time.time()
    for beam, bias in itertools.product(args.beams, args.copy_biases):
        found = {src: rewriter.rewrite_candidates(inputs[src], src, tgt, beam=beam, copy_bias=bias,
                                                  lm_style=any(args.lm_style_weights), progress=True)
                 for src, tgt in directions}
        hits = {}  # the judge's verdict on every candidate, (N, K) per direction
        for src, tgt in directions:
            flat = [text for row in found[src][0] for text in row]
            labels = classify(judge, judge_tokenizer, flat, info["labels"])
            hits[src] = torch.tensor([label == tgt for label in labels]).view(len(inputs[src]), -1)
        for a, b, c, d in itertools.product(args.style_weights, args.content_weights, args.overlap_weights,
                                            args.lm_style_weights):
            outputs, sources, correct = [], [], 0
            for src, _ in directions:
                texts, terms = found[src]
                picks = rerank_choice(terms, a, b, args.allow_copy, c, d)
                outputs += [row[int(k)] for row, k in zip(texts, picks)]
                sources += inputs[src]
                correct += int(hits[src][torch.arange(len(picks)), picks].sum())
            rows.append({"beam": beam, "copy_bias": bias, "style_weight": a, "content_weight": b, "overlap_weight": c,
                         "lm_style_weight": d, "accuracy": 100 * correct / len(outputs),
                         "self_bleu": corpus_bleu(outputs, sources),
                         "copy": 100 * sum(o == s for o, s in zip(outputs, sources)) / len(outputs)})
        print(f"beam {beam}, copy bias {bias:g}: done ({time.time() - started:.0f} s)", flush=True)
    allowed = [r for r in rows if r["accuracy"] >= args.min_accuracy and r["copy"] < 5.0]
    chosen = max(allowed, key=lambda r: (r["self_bleu"], -r["beam"], -r["copy_bias"])) if allowed else None
    lines = ["| beam | copy bias | style weight | content weight | overlap weight | LM style weight | accuracy | "
             + "self-BLEU | copy |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " **chosen**" if r is chosen else ""
        lines.append(f"| {r['beam']} | {r['copy_bias']:g} | {r['style_weight']:g} | {r['content_weight']:g} | "
                     f"{r['overlap_weight']:g} | {r['lm_style_weight']:g} | {r['accuracy']:.1f}% | {r['self_bleu']:.1f} | "
                     f"{r['copy']:.1f}%{mark} |")
    verdict = (f"Chosen: beam {chosen['beam']}, copy bias {chosen['copy_bias']:g}, style weight "
               f"{chosen['style_weight']:g}, content weight {chosen['content_weight']:g}, overlap weight "
               f"{chosen['overlap_weight']:g}, LM style weight {chosen['lm_style_weight']:g} (dev accuracy "
               f"{chosen['accuracy']:.1f}%, self-BLEU {chosen['self_bleu']:.1f}, copy {chosen['copy']:.1f}%)." if chosen else
               f"No point reaches {args.min_accuracy:g}% dev accuracy with a copy rate under 5%.")
    copies = "copies allowed" if args.allow_copy else "copies of the input passed over"
    md = (f"# Rerank weights on Yelp dev ({args.sentences} + {args.sentences} sentences, model {args.model}, "
          f"{copies})\n\n"
          f"Rule, fixed before the run: highest dev self-BLEU with dev accuracy >= {args.min_accuracy:g}% and copy "
          "< 5%.\n\n" + "\n".join(lines) + f"\n\n{verdict}\n")
    print(md)
    if args.quick:
        print("(--quick: a smoke run on a slice of the data; not recorded)")
        return
    record(args.name, {"rows": rows, "chosen": chosen, "model": str(args.model), "min_accuracy": args.min_accuracy,
                       "allow_copy": args.allow_copy, "sentences_per_style": args.sentences,
                       "seconds": round(time.time() - started, 1), "torch_threads": torch.get_num_threads()}, md)


if __name__ == "__main__":
    main()
