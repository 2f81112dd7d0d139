"""SeqGAN Monte-Carlo rollouts: textgan's cached completions against re-encoding the prefix at every token.

    python benchmarks/rollout_speed.py            # batch 64, K=16, default generator
    python benchmarks/rollout_speed.py --quick

All compute ``textgan.rl.mc_rollout_rewards`` for the same sampled batch with the same
(trivial) scorer, so only the completion strategy differs:
- shared cache (textgan): ``textgan.sampling.PrefixCompleter`` encodes the sampled batch once and
  forks its KV cache at every prefix, K rows per sentence, then decodes: one prefix length at a
  time (the default on a CPU), or every length in one batch, each row from its own position (the
  default on a GPU, where it replays one CUDA graph T - 1 times instead of launching ~T²/2 steps);
- prefill per prefix: ``textgan.sampling.sample`` with the prefix as prompt: each prefix is encoded
  once per prefix length (K copies), then decoded with a KV cache;
- re-encoding: every new token of every completion runs the model over the whole prefix so far
  (what rollout code without a cache does).
Writes benchmarks/results/rollout_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import torch
from _record import device_name, record, results_name
from sampler_speed import sync_device

from textgan.models import build_generator
from textgan.rl import mc_rollout_rewards
from textgan.sampling import PrefixCompleter, draw, sample

VOCAB, BOS, EOS, PAD = 428, 1, 2, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; a GPU's results go to rollout_speed_cuda.{json,md}")
    args = parser.parse_args()
    batch, rollouts, length = (8, 4, 8) if args.quick else (64, 16, 20)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_generator(VOCAB, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_positions=64).eval().to(device)
    bos = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
    never = VOCAB  # no row ends early: every rollout runs to full length, the same work for both strategies
    fake = sample(model, bos, length, eos_id=never, pad_id=PAD)

    def score(sentences):
        return torch.zeros(len(sentences), device=device)

    by_length = PrefixCompleter(model, bos, fake.tokens, eos_id=never, pad_id=PAD, prefix_batch_rows=0)
    together = PrefixCompleter(model, bos, fake.tokens, eos_id=never, pad_id=PAD)  # GPU: sized by memory
    default = "every length at once" if together.prefix_batch_rows else "one length at a time"
    together.prefix_batch_rows = together.rows_in_prefix_batch_bytes()  # the GPU's batches, on any device

    def prefill(prefixes, rows):
        prompt = torch.cat([torch.full((len(prefixes), 1), BOS, dtype=torch.long, device=device), prefixes], 1)
        return torch.cat([prefixes, sample(model, prompt, length - prefixes.shape[1], eos_id=never, pad_id=PAD).tokens], 1)

    @torch.no_grad()
    def reencoding(prefixes, rows):
        ids = torch.cat([torch.full((len(prefixes), 1), BOS, dtype=torch.long, device=device), prefixes], 1)
        while ids.shape[1] < length + 1:
            logits = model(input_ids=ids).logits[:, -1].float()
            ids = torch.cat([ids, draw(torch.softmax(logits, -1))[:, None]], 1)
        return ids[:, 1:]

    times = {}
    strategies = (("one length at a time", by_length), ("every length at once", together),
                  ("prefill per prefix", prefill), ("re-encoding", reencoding))
    for name, complete in strategies:
        mc_rollout_rewards(fake.tokens[:2], fake.mask[:2], complete, score, 2)  # warm-up, untimed
        sync_device()
        start = time.perf_counter()
        mc_rollout_rewards(fake.tokens, fake.mask, complete, score, rollouts)
        sync_device()
        times[name] = time.perf_counter() - start
        print(f"{name}: {times[name]:.2f} s", flush=True)
    speedup = times["re-encoding"] / times[default]
    labels = {"one length at a time": "textgan: the batch encoded once, its KV cache forked at every prefix, "
                                      "one prefix length at a time",
              "every length at once": "textgan: the same forks, every prefix length in one batch",
              "prefill per prefix": "each prefix prefilled (K copies), then KV-cached decoding",
              "re-encoding": "re-encoding the prefix for every token"}
    rows = "".join(f"| {labels[name]}{' (default here)' if name == default else ''} | {times[name]:.2f} "
                   f"| {times['re-encoding'] / times[name]:.1f}x |\n" for name, _ in strategies)
    markdown = (f"| rollouts of a batch of {batch}, K={rollouts}, length {length} | seconds | vs re-encoding |\n"
                f"|---|---:|---:|\n{rows}\n"
                f"Speed-up of textgan's rollouts (its default here: {default}) over re-encoding: **{speedup:.1f}x** "
                f"(default generator, d_model 128, 2 layers, {device_name(args.device)}).\n")
    print(markdown)
    if not args.quick:
        record(results_name("rollout_speed", args.device), {"batch": batch, "rollouts": rollouts, "length": length, "seconds": times,
                                 "default": default, "speedup": speedup}, markdown)


if __name__ == "__main__":
    main()
