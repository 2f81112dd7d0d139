"""Training and sampling speed against the machine's own limit, on the default generator and a 4x larger one.

    python benchmarks/speed.py            # full run
    python benchmarks/speed.py --quick    # a smoke run

In one run:
1. the matmul ceiling: GFLOP/s of a 2048x2048 fp32 matmul through torch (8192x8192 on a GPU; best of 10): on a
   CPU the faster of torch.mm and oneDNN's linear (``textgan.models.onednn``; 2.1x torch.mm on an AMD EPYC);
   beside it the machine's rate for the passes between the products: GB/s of an fp32 multiply over the d256
   MLP's activations in a step (64 x 21 x 1024 floats), which the ceiling says nothing of;
2. the MLE step: tokens/s and achieved FLOP/s (6 x matmul parameters per token, plus attention) as a
   fraction of the ceiling, eager and with the recipes' ``compile=true`` (torch.compile of the forward;
   its compilation and recompiles fall in ten warm-up steps; not in --quick, which needs no compiler);
3. sampling: textgan's sampler against ``generate()`` on the same weights, batch 64, lengths 20 and 50;
4. one ScratchGAN step and one SeqGAN step with K=16 rollouts, as multiples of the MLE step's cost.
Step costs are the mean wall time per step from the log of the real recipes (log_every=1,
no evaluation or checkpoint inside the timed steps), on the embedded grammar corpus, batch 64.
The recipe's ScratchGAN step takes 3 D updates (its default) and its MLE step sees real batches,
which are narrower than sampled ones; so the ScratchGAN step is also timed as the issue defines it:
sample, score, one G update and one D update (``scratchgan.adversarial_step`` with disc_steps=1),
against ``mle_step`` on a batch of the same shape as the sampled one.
Writes benchmarks/results/speed.{json,md}. ``benchmarks/throughput.py`` times the same step functions at
larger batches, the ones a GPU needs before arithmetic rather than kernel launches sets a step's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import torch
from _record import device_name, record, results_name
from sampler_speed import best_of, compare, mean_seconds, median_round

from textgan import memory
from textgan.models import build_generator, onednn

SIZES = {"default (d128, 2 layers)": {"d_model": 128, "n_layers": 2, "n_heads": 4},
         "4x (d256, 2 layers)": {"d_model": 256, "n_layers": 2, "n_heads": 4}}
VOCAB = 428  # the embedded grammar's vocabulary
BATCH = 64


def matmul_ceiling(n: int = 2048, repeats: int = 5, device: str = "cpu") -> tuple[float, dict]:
    """GFLOP/s of an n x n fp32 product, the faster of torch.mm and (on a CPU, where torch has it) oneDNN's
    linear, which on some CPUs runs at twice torch.mm's speed (``textgan.models.onednn``); and each one's."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    found = {"torch.mm": 2 * n**3 / best_of(lambda: a @ b, repeats) / 1e9}
    if device == "cpu" and onednn._operator() is not None:
        found["oneDNN"] = 2 * n**3 / best_of(lambda: onednn.product(a, b), repeats) / 1e9
    return max(found.values()), found


def elementwise_rate(repeats: int = 20, device: str = "cpu") -> float:
    """GB/s (two operands read, one written) of an fp32 multiply over 64 x 21 x 1024 floats, the d256 MLP's
    activations in an MLE step: the speed of a step's elementwise passes (RMSNorm, rotary, gated MLP and their
    backward), which run at memory speed and which the matmul ceiling says nothing of."""
    a, b = torch.randn(64 * 21 * 1024, device=device), torch.randn(64 * 21 * 1024, device=device)
    out = torch.empty_like(a)
    return 3 * a.numel() * a.element_size() / best_of(lambda: torch.mul(a, b, out=out), repeats) / 1e9


def train_flops_per_token(d_model: int, n_layers: int, vocab: int, context: int) -> float:
    """6 x parameters in matmuls (QKVO, MLP, output layer), plus attention scores and values (forward 4*T*d per layer)."""
    matmul_params = n_layers * (4 * d_model**2 + 3 * d_model * 4 * d_model) + d_model * vocab
    return 6 * matmul_params + 3 * n_layers * 4 * context * d_model


def step_seconds(recipe: str, size: dict, steps: int, extra: dict, device: str, warmup: int = 2) -> float:
    """Mean seconds per step of a recipe after ``warmup`` steps, from its own metrics log."""
    from textgan.recipes import load_recipe

    module, config_cls = load_recipe(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        config = config_cls(out_dir=tmp, batch_size=BATCH, steps=steps, log_every=1, eval_every=10**6,
                            checkpoint_every=10**6, eval_samples=16, print_samples=0, grammar_sentences=5000,
                            device=device, **size, **extra)
        config.check()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module.main(config)
        times = [json.loads(line)["time"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    # the log's clock has 10 ms resolution: average over the steps after the warm-up steps
    return (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


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


def gan_step_on_same_batch(size: dict, repeats: int, device: str, batch: int = BATCH) -> dict:
    """One ScratchGAN step (sample, score, G update, one D update) and one MLE step on a batch of the
    sampled batch's shape, timed directly with the recipe's own step functions: seconds each and the ratio."""
    from types import SimpleNamespace

    from textgan.recipes import scratchgan
    from textgan.rl import EMABaseline
    from textgan.sampling import sample
    from textgan.training import gan_optimizers, mle_step

    torch.manual_seed(0)
    config = scratchgan.ScratchGANConfig(disc_steps=1, batch_size=batch, **size)
    generator = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, max_positions=64, **size)
    discriminator = scratchgan.recipe_discriminator(config, VOCAB, 0)
    generator, discriminator = generator.to(device), discriminator.to(device)
    optimizers = gan_optimizers(config, generator, discriminator)
    ema = EMABaseline(config.max_length + 1, config.baseline_decay)
    setup = SimpleNamespace(eos_id=2, pad_id=0)
    prompt = torch.ones(batch, 1, dtype=torch.long, device=device)
    real = torch.cat([prompt, torch.randint(3, VOCAB, (batch, config.max_length), device=device),
                      torch.full((batch, 1), 2, device=device)], 1)
    widths = []

    def gan():
        scratchgan.adversarial_step(config, generator, discriminator, optimizers, ema, prompt, real, setup)

    gan_s = mean_seconds(gan, repeats)
    for _ in range(repeats):  # the shapes the GAN step trained on
        widths.append(sample(generator, prompt, config.max_length + 1, eos_id=2, pad_id=0).tokens.shape[1])
    same = torch.cat([prompt, torch.randint(3, VOCAB, (batch, round(sum(widths) / len(widths))), device=device)], 1)
    mle_s = mean_seconds(lambda: mle_step(generator, optimizers["mle"], same, eos_id=2), repeats)
    return {"gan_step_s": gan_s, "mle_same_batch_s": mle_s, "ratio": gan_s / mle_s, "sampled_width": same.shape[1] - 1}


def sampling(size: dict, length: int, repeats: int, rounds: int, device: str) -> dict:
    """The sampler against generate(): the median of ``rounds`` rounds, each a best of ``repeats``
    (one round on a shared machine lands anywhere in a wide range: see sampler_speed.py)."""
    torch.manual_seed(0)
    model = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, max_positions=64, **size).eval().to(device)
    narrow = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, max_positions=64, **{**size, "d_model": 16})
    narrow = narrow.eval().to(device)
    return median_round([compare(model, narrow, BATCH, length, repeats) for _ in range(rounds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; a GPU's results go to speed_cuda.{json,md}")
    parser.add_argument("--name", default="speed", help="results file name, for another machine's run beside the "
                                                        "recorded one (speed_amd_epyc, say)")
    args = parser.parse_args()
    memory.keep_freed_memory()  # as every textgan command does before it trains (textgan.memory)
    gpu = args.device.startswith("cuda")
    steps = 6 if args.quick else 60 if gpu else 20
    sampler_repeats, sampler_rounds = (1, 1) if args.quick else (10, 5)  # per length: best of, median of
    # a GPU needs a larger product to reach its ceiling
    n = 512 if args.quick else 8192 if gpu else 2048
    ceiling, ceilings = matmul_ceiling(n, repeats=3 if args.quick else 10, device=args.device)
    elementwise_repeats = 3 if args.quick else 20
    elementwise = elementwise_rate(elementwise_repeats, device=args.device)
    print(f"matmul ceiling: {ceiling:.1f} GFLOP/s; elementwise {elementwise:.1f} GB/s", flush=True)
    rows = []
    for name, size in SIZES.items():
        mle_s = step_seconds("mle", size, steps, {}, args.device)
        compiled_s = None if args.quick else step_seconds("mle", size, steps + 10, {"compile": True}, args.device,
                                                          warmup=10)
        scratch_s = step_seconds("scratchgan", size, steps, {"pretrain_steps": 0}, args.device)
        seqgan_s = step_seconds("seqgan", size, max(4, steps // 5),
                                {"pretrain_steps": 0, "disc_pretrain_steps": 0, "num_rollouts": 2 if args.quick else 16}, args.device)
        # positions per MLE step: batches are cut to their longest sentence, so measure the widths the recipe sees
        context = mean_batch_width(steps)
        tokens = BATCH * context
        flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, context) * tokens / mle_s
        row = {"size": name, "mle_step_s": mle_s, "mle_tok_s": tokens / mle_s, "mle_gflop_s": flops / 1e9,
               "mle_fraction_of_ceiling": flops / 1e9 / ceiling, "mle_compiled_step_s": compiled_s,
               "mle_compiled_fraction_of_ceiling": None if compiled_s is None else flops * mle_s / compiled_s / 1e9 / ceiling,
               "scratchgan_step_s": scratch_s,
               "scratchgan_over_mle": scratch_s / mle_s, "seqgan_k16_step_s": seqgan_s, "seqgan_over_mle": seqgan_s / mle_s,
               "scratchgan_issue_definition": gan_step_on_same_batch(size, 5 if args.quick else 30, args.device),
               "sampling": [sampling(size, length, sampler_repeats, sampler_rounds, args.device)
                            for length in ((5,) if args.quick else (20, 50))]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    each = " and ".join(f"{name} {value:.1f}" for name, value in ceilings.items())
    library = "" if gpu else f" textgan's fp32 products on this CPU: {onednn.describe()}."
    lines = [(f"{device_name(args.device)}. Matmul ceiling ({n}x{n} fp32 through torch, best of 10; the faster of "
              f"{each}): **{ceiling:.1f} GFLOP/s**.{library} Elementwise passes: an fp32 multiply over "
              f"64 x 21 x 1024 floats (the d256 MLP's activations in a step) at **{elementwise:.1f} GB/s** "
              f"(best of {elementwise_repeats})."), "",
             ("| generator | MLE step | MLE tok/s | MLE GFLOP/s (of ceiling) | MLE step, compile=true (of ceiling) "
              "| ScratchGAN step (x MLE) "
              "| ScratchGAN: sample + score + G + 1 D (x MLE on the same batch) "
              "| SeqGAN K=16 step (x MLE) | sampler vs generate() tok/s |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["scratchgan_issue_definition"]
        sampled = "; ".join(f"len {s['length']}: {s['textgan_tokens_per_s']:,.0f} vs {s['generate_tokens_per_s']:,.0f} "
                            f"({s['speedup']:.2f}x; {min(s['round_speedups']):.2f}-{max(s['round_speedups']):.2f}x; "
                            f"{s['speedup_after_update']:.2f}x after a weight change)" for s in r["sampling"])
        compiled = ("n/a" if r["mle_compiled_step_s"] is None else
                    f"{r['mle_compiled_step_s'] * 1e3:.0f} ms ({r['mle_compiled_fraction_of_ceiling']:.0%})")
        lines.append(f"| {r['size']} | {r['mle_step_s'] * 1e3:.0f} ms | {r['mle_tok_s']:,.0f} | {r['mle_gflop_s']:.1f} "
                     f"({r['mle_fraction_of_ceiling']:.0%}) | {compiled} "
                     f"| {r['scratchgan_step_s'] * 1e3:.0f} ms ({r['scratchgan_over_mle']:.1f}x) "
                     f"| {g['gan_step_s'] * 1e3:.0f} ms vs {g['mle_same_batch_s'] * 1e3:.0f} ms ({g['ratio']:.1f}x) "
                     f"| {r['seqgan_k16_step_s']:.2f} s ({r['seqgan_over_mle']:.0f}x) | {sampled} |")
    markdown = "\n".join(lines) + ("\n\nBatch 64 on the embedded grammar corpus (vocabulary 428; each batch is cut to its "
                                   "longest sentence); step costs are means over the recipes' own logged steps after two warm-up steps "
                                   "(ten with compile=true, whose compilation they hold). "
                                   "The recipe's ScratchGAN step has 3 D updates and is compared with the MLE recipe's step on real "
                                   "batches; the next column times one step as issue #6 defines it (one D update) against an MLE "
                                   "step on a batch of the sampled batch's shape. "
                                   f"The sampler column is the median of {sampler_rounds} rounds, each the best of "
                                   f"{sampler_repeats} interleaved runs, "
                                   "with the range over the rounds, on weights unchanged since the calls before "
                                   "(inference, evaluation: on a CPU the decoder reuses the last call's folded and packed "
                                   "matrices) and, last, in the same round after a weight change (training's calls).\n")
    print(markdown)
    if not args.quick:
        record(results_name(args.name, args.device), {"matmul_ceiling_gflop_s": ceiling, "ceilings": ceilings,
                                                      "elementwise_gb_s": elementwise,
                                                      "cpu_matmul": None if gpu else onednn.describe(), "rows": rows},
               markdown)


if __name__ == "__main__":
    main()
