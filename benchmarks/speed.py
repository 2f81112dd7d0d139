"""Training and sampling speed against the machine's own limit, on the default generator and a 4x larger one.

    python benchmarks/speed.py            # full run
    python benchmarks/speed.py --quick    # a smoke run

In one run:
1. the matmul ceiling: GFLOP/s of a 2048x2048 fp32 matmul through torch (best of 10);
2. the MLE step: tokens/s and achieved FLOP/s (6 x matmul parameters per token, plus attention) as a
   fraction of the ceiling;
3. sampling: textgan's sampler against ``generate()`` on the same weights, batch 64, lengths 20 and 50;
4. one ScratchGAN step and one SeqGAN step with K=16 rollouts, as multiples of the MLE step's cost on
   the same batch.
Step costs are the mean wall time per step from the log of the real recipes (log_every=1,
no evaluation or checkpoint inside the timed steps), on the embedded grammar corpus, batch 64.
Writes benchmarks/results/speed.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import torch
from _record import record
from sampler_speed import best_of, compare

from textgan.models import build_generator

SIZES = {"default (d128, 2 layers)": {"d_model": 128, "n_layers": 2, "n_heads": 4},
         "4x (d256, 2 layers)": {"d_model": 256, "n_layers": 2, "n_heads": 4}}
VOCAB = 428  # the embedded grammar's vocabulary
BATCH = 64


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = best_of(lambda: a @ b, repeats)
    return 2 * n**3 / best / 1e9


def train_flops_per_token(d_model: int, n_layers: int, vocab: int, context: int) -> float:
    """6 x parameters in matmuls (QKVO, MLP, output layer), plus attention scores and values (forward 4*T*d per layer)."""
    matmul_params = n_layers * (4 * d_model**2 + 3 * d_model * 4 * d_model) + d_model * vocab
    return 6 * matmul_params + 3 * n_layers * 4 * context * d_model


def step_seconds(recipe: str, size: dict, steps: int, extra: dict) -> float:
    """Mean seconds per step of a recipe, from its own metrics log."""
    import importlib

    module = importlib.import_module(f"textgan.recipes.{recipe}")
    config_cls = next(v for k, v in vars(module).items() if k.endswith("Config") and v.__module__ == module.__name__)
    with tempfile.TemporaryDirectory() as tmp:
        config = config_cls(out_dir=tmp, batch_size=BATCH, steps=steps, log_every=1, eval_every=10**6,
                            checkpoint_every=10**6, eval_samples=16, print_samples=0, grammar_sentences=5000,
                            **size, **extra)
        config.check()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module.main(config)
        times = [json.loads(line)["time"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    # the log's clock has 10 ms resolution: average over the steps after two warm-up steps
    return (times[-1] - times[2]) / (len(times) - 3)


def mean_batch_width(steps: int) -> float:
    """Mean number of teacher-forced positions per batch in the recipes' first ``steps`` MLE batches."""
    from textgan.data import batch_at, encode
    from textgan.grammar import Grammar
    from textgan.tokenization import build_word_tokenizer, special_ids

    corpus = Grammar.default().sample_corpus(5000, seed=0)
    tokenizer = build_word_tokenizer(corpus)
    ids, _ = encode(corpus, tokenizer, 20)
    eos = special_ids(tokenizer)[1]
    return sum(batch_at(ids, BATCH, step, 0, eos).shape[1] - 1 for step in range(steps)) / steps


def sampling(size: dict, length: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, max_positions=64, **size).eval()
    return compare(model, BATCH, length, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, repeats = (6, 1) if args.quick else (20, 3)
    ceiling = matmul_ceiling(512 if args.quick else 2048, repeats=3 if args.quick else 10)
    print(f"matmul ceiling: {ceiling:.1f} GFLOP/s", flush=True)
    rows = []
    for name, size in SIZES.items():
        mle_s = step_seconds("mle", size, steps, {})
        scratch_s = step_seconds("scratchgan", size, steps, {"pretrain_steps": 0})
        seqgan_s = step_seconds("seqgan", size, max(4, steps // 5),
                                   {"pretrain_steps": 0, "disc_pretrain_steps": 0, "num_rollouts": 16})
        # positions per MLE step: batches are cut to their longest sentence, so measure the widths the recipe sees
        context = mean_batch_width(steps)
        tokens = BATCH * context
        flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, context) * tokens / mle_s
        row = {"size": name, "mle_step_s": mle_s, "mle_tok_s": tokens / mle_s, "mle_gflop_s": flops / 1e9,
               "mle_fraction_of_ceiling": flops / 1e9 / ceiling, "scratchgan_step_s": scratch_s,
               "scratchgan_over_mle": scratch_s / mle_s, "seqgan_k16_step_s": seqgan_s, "seqgan_over_mle": seqgan_s / mle_s,
               "sampling": [sampling(size, length, repeats) for length in ((5,) if args.quick else (20, 50))]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    lines = [f"Matmul ceiling (2048x2048 fp32 through torch, best of 10): **{ceiling:.1f} GFLOP/s**.", "",
             ("| generator | MLE step | MLE tok/s | MLE GFLOP/s (of ceiling) | ScratchGAN step (x MLE) "
              "| SeqGAN K=16 step (x MLE) | sampler vs generate() tok/s |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        sampled = "; ".join(f"len {s['length']}: {s['textgan_tokens_per_s']:,.0f} vs {s['generate_tokens_per_s']:,.0f} ({s['speedup']:.2f}x)"
                            for s in r["sampling"])
        lines.append(f"| {r['size']} | {r['mle_step_s'] * 1e3:.0f} ms | {r['mle_tok_s']:,.0f} | {r['mle_gflop_s']:.1f} "
                     f"({r['mle_fraction_of_ceiling']:.0%}) | {r['scratchgan_step_s'] * 1e3:.0f} ms ({r['scratchgan_over_mle']:.1f}x) "
                     f"| {r['seqgan_k16_step_s']:.2f} s ({r['seqgan_over_mle']:.0f}x) | {sampled} |")
    markdown = "\n".join(lines) + ("\n\nBatch 64 on the embedded grammar corpus (vocabulary 428; each batch is cut to its "
                                   "longest sentence); step costs are means over the recipes' own logged steps after two warm-up steps.\n")
    print(markdown)
    if not args.quick:
        record("speed", {"matmul_ceiling_gflop_s": ceiling, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
