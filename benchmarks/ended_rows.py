"""Decoding on a CPU with and without dropping the rows that have ended, on a trained generator.

    python benchmarks/ended_rows.py                        # trains an MLE generator first (about a minute)
    python benchmarks/ended_rows.py --model runs/scratchgan/generator
    python benchmarks/ended_rows.py --quick                # a smoke run

A trained generator's sentences end at many lengths, and textgan's decoding loops stop decoding a
row once it has ended (the sampler and greedy decoding), or a source once all of its beam's
hypotheses have (beam search). Each loop runs here both ways on the same batches, interleaved and
alternating which goes first, and the outputs are compared bitwise: the drops must change nothing
but the time. Prompts are BOS alone (sampling) or BOS and the first 1-4 words of a sentence of the
embedded grammar, left-padded (greedy and beam search, as style transfer's sources are). Writes
benchmarks/results/ended_rows.{json,md}.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from _pipeline import run_recipe
from _record import record

from textgan import sampling, transfer
from textgan.grammar import Grammar
from textgan.models import load_generator
from textgan.tokenization import special_ids


def prompts(tokenizer, sentences: list[str], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS and the first 1-4 words of each sentence, left-padded: (B, P) ids and (B, P) mask."""
    bos, _, pad = special_ids(tokenizer)
    rng = random.Random(seed)
    rows = []
    for sentence in sentences:
        words = sentence.split()
        rows.append([bos, *tokenizer.convert_tokens_to_ids(words[: rng.randint(1, max(1, min(4, len(words) - 1)))])])
    return sampling.left_pad(rows, pad)


def decoders(model, tokenizer, max_new: int) -> dict:
    """name -> (rows per batch, decode(batch index, prompt, mask) -> tensors to compare)."""
    bos, eos, pad = special_ids(tokenizer)

    def draw(i, prompt, mask):  # from BOS alone, seeded alike both ways
        torch.manual_seed(i)
        out = sampling.sample(model, torch.full((len(prompt), 1), bos), max_new, eos_id=eos, pad_id=pad)
        return out.tokens, out.logprobs

    def beam(k):
        def run(i, prompt, mask):
            return transfer.beam_search(model, prompt, mask, max_new, eos, pad, beam=k, n_best=True)
        return run

    return {
        "sample (batch 128)": (128, draw),
        "greedy (batch 128)": (128, lambda i, prompt, mask: (transfer.greedy(model, prompt, mask, max_new, eos, pad),)),
        "beam 4 (64 sources)": (64, beam(4)),
        "beam 32 (16 sources)": (16, beam(32)),
    }


def time_both(decode, batches, passes: int) -> dict:
    """Each batch decoded with drops and without, interleaved; total seconds of each and how many
    batches gave bitwise-equal outputs."""
    original = sampling._rows_to_keep

    def never(finished, held, **options):
        return None

    seconds, equal = {"drop": 0.0, "keep": 0.0}, 0
    for p in range(passes):
        for i, (prompt, mask) in enumerate(batches):
            outputs = {}
            for mode in ("drop", "keep") if (p + i) % 2 == 0 else ("keep", "drop"):
                rows_to_keep = original if mode == "drop" else never
                sampling._rows_to_keep = rows_to_keep
                try:
                    start = time.perf_counter()
                    with torch.no_grad():
                        outputs[mode] = decode(i, prompt, mask)
                    seconds[mode] += time.perf_counter() - start
                finally:
                    sampling._rows_to_keep = original
            equal += all(torch.equal(a, b) for a, b in zip(outputs["drop"], outputs["keep"]))
    return {"drop_s": seconds["drop"], "keep_s": seconds["keep"], "speedup": seconds["keep"] / seconds["drop"],
            "bitwise_equal": equal, "batches": passes * len(batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained generator folder (default: train an MLE generator first)")
    parser.add_argument("--steps", type=int, default=600, help="MLE steps when training the generator (default 600)")
    parser.add_argument("--batches", type=int, default=8, help="batches per decoding loop (default 8)")
    parser.add_argument("--passes", type=int, default=3, help="passes over them (default 3)")
    parser.add_argument("--max-new", type=int, default=40, help="new tokens at most (default 40)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model
        if path is None:
            out = Path(scratch) / "mle"
            overrides = [f"out_dir={out}", f"steps={30 if args.quick else args.steps}", "eval_every=100000",
                         "eval_samples=32"] + (["d_model=32", "n_layers=1"] if args.quick else [])
            run_recipe("mle", overrides, out, in_process=args.quick)
            path = str(out / "generator")
        model, tokenizer = load_generator(path)
    model.eval()
    batches_n, passes = (1, 1) if args.quick else (args.batches, args.passes)
    sentences = Grammar.default().sample_corpus(128 * batches_n, seed=7)
    rows = {}
    for name, (size, decode) in decoders(model, tokenizer, args.max_new).items():
        batches = [prompts(tokenizer, sentences[i * size:(i + 1) * size], seed=i) for i in range(batches_n)]
        rows[name] = time_both(decode, batches, passes)
        print(name, rows[name], flush=True)
    bos, eos, pad = special_ids(tokenizer)
    lengths = sampling.sample(model, torch.full((512, 1), bos), args.max_new, eos_id=eos, pad_id=pad).lengths.float()
    table = ["| decoding | rows ended dropped (s) | whole batch (s) | speed-up | bitwise-equal batches |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        table.append(f"| {name} | {r['drop_s']:.2f} | {r['keep_s']:.2f} | {r['speedup']:.2f}x "
                     f"| {r['bitwise_equal']} of {r['batches']} |")
    source = args.model or f"an MLE generator trained for {30 if args.quick else args.steps} steps on the embedded corpus"
    md = (f"# Decoding with and without dropping ended rows (CPU)\n\nGenerator: {source}; its samples' lengths: "
          f"mean {lengths.mean():.1f}, longest {lengths.max():.0f} tokens (at most {args.max_new}). {batches_n} batches "
          f"per loop, {passes} interleaved passes; times are totals.\n\n" + "\n".join(table) + "\n")
    print(md)
    if not args.quick:
        record("ended_rows", {"model": source, "rows": rows, "mean_length": lengths.mean().item(),
                              "longest": lengths.max().item()}, md)


if __name__ == "__main__":
    main()
