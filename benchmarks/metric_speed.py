"""BLEU-2..5 and Self-BLEU-2..5 on COCO: textgan against nltk and the fast-bleu package, in one run.

    python benchmarks/metric_speed.py            # 10,000 hypotheses (COCO train) against COCO test
    python benchmarks/metric_speed.py --quick    # 500 hypotheses
    python benchmarks/metric_speed.py --name metric_speed_amd_epyc_zen4   # another machine, beside the first record

textgan and fast-bleu run on the whole input. nltk is quadratic (every hypothesis recounts every
reference), so it runs on the first --nltk-sentences hypotheses against the same full reference
set and its time is extrapolated linearly to all of them: per hypothesis its cost does not depend
on which hypothesis it is. Its scores on those hypotheses are checked against ours (max |diff|).
nltk is called once per order, as Texygen does. fast-bleu (C++) is optional: pip install fast-bleu.
Writes benchmarks/results/metric_speed.{json,md} (or --name's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _record import record

from textgan.bleu import bleu_scores, self_bleu_scores, tokenize

ORDERS = (2, 3, 4, 5)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def nltk_scores(hypotheses, reference_sets, n):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    return [sentence_bleu(refs, h, (1.0 / n,) * n, smoothing_function=smooth) for h, refs in zip(hypotheses, reference_sets)]


def fast_bleu_scores(kind, hypotheses, references):
    try:
        import fast_bleu
    except ImportError:
        return None
    weights = {n: (1.0 / n,) * n for n in ORDERS}
    if kind == "bleu":
        return fast_bleu.BLEU(references, weights).get_score(hypotheses)
    return fast_bleu.SelfBLEU(hypotheses, weights).get_score()


def max_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder with COCO train.txt and test.txt")
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--nltk-sentences", type=int, default=40)
    parser.add_argument("--name", default="metric_speed", help="results name (default: metric_speed)")
    args = parser.parse_args()
    if not (args.data / "train.txt").exists():
        sys.exit(f"error: {args.data}/train.txt not found; pass --data with the COCO folder (../shared/data/coco)")
    count = 500 if args.quick else args.sentences
    hypotheses = tokenize((args.data / "train.txt").read_text().splitlines()[:count])
    references = tokenize((args.data / "test.txt").read_text().splitlines())
    n_nltk = min(args.nltk_sentences if not args.quick else 10, count)
    rows = []
    for kind in ("bleu", "self-bleu"):
        if kind == "bleu":
            ours, t_ours = timed(lambda: bleu_scores(hypotheses, references, ORDERS))
            reference_sets = [references] * n_nltk
        else:
            ours, t_ours = timed(lambda: self_bleu_scores(hypotheses, ORDERS))
            reference_sets = [hypotheses[:i] + hypotheses[i + 1 :] for i in range(n_nltk)]
        fast, t_fast = timed(lambda kind=kind: fast_bleu_scores(kind, hypotheses, references))
        t_nltk, diff_nltk = 0.0, 0.0
        for n in ORDERS:
            expected, t = timed(lambda refs=reference_sets, n=n: nltk_scores(hypotheses[:n_nltk], refs, n))
            t_nltk += t
            diff_nltk = max(diff_nltk, max_diff(ours[n][:n_nltk], expected))
        t_nltk_all = t_nltk * count / n_nltk
        diff_fast = max(max_diff(ours[n], fast[n]) for n in ORDERS) if fast else None
        means = {n: sum(ours[n]) / count for n in ORDERS}
        rows.append({"metric": kind, "sentences": count, "references": len(references) if kind == "bleu" else count - 1,
                     "textgan_s": t_ours, "fast_bleu_s": t_fast if fast else None, "nltk_s_extrapolated": t_nltk_all,
                     "nltk_sentences_timed": n_nltk, "max_abs_diff_nltk": diff_nltk, "max_abs_diff_fast_bleu": diff_fast,
                     "scores": means})
        print(f"{kind}: textgan {t_ours:.2f}s, fast-bleu {t_fast:.2f}s, nltk ~{t_nltk_all:.0f}s (extrapolated from "
              f"{n_nltk}); |diff| nltk {diff_nltk:.1e}, fast-bleu {diff_fast}; " + " ".join(f"{n}:{v:.3f}" for n, v in means.items()))
    lines = [("| metric (orders 2-5) | sentences | textgan | fast-bleu (C++) | nltk (extrapolated) | vs fast-bleu | vs nltk "
              "| max abs diff vs nltk | max abs diff vs fast-bleu |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fb = f"{r['fast_bleu_s']:.1f} s" if r["fast_bleu_s"] is not None else "not installed"
        fbx = f"{r['fast_bleu_s'] / r['textgan_s']:.1f}x faster" if r["fast_bleu_s"] is not None else "-"
        fbd = f"{r['max_abs_diff_fast_bleu']:.1e}" if r["max_abs_diff_fast_bleu"] is not None else "-"
        lines.append(f"| {r['metric']} | {r['sentences']:,} | {r['textgan_s']:.1f} s | {fb} | {r['nltk_s_extrapolated'] / 60:.0f} min "
                     f"| {fbx} | {r['nltk_s_extrapolated'] / r['textgan_s']:.0f}x faster | {r['max_abs_diff_nltk']:.1e} "
                     f"(on {r['nltk_sentences_timed']}) | {fbd} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if not args.quick:
        record(args.name, {"rows": rows}, markdown)


if __name__ == "__main__":
    main()
