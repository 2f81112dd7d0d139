"""The lean teacher-forced forward (``textgan.models.fast_forward``) against the Hugging Face forward, in training steps.

    python benchmarks/train_forward.py            # d128 and d256, batch 64, 15 and 21 positions
    python benchmarks/train_forward.py --quick

Both run ``textgan.training.mle_step`` on the same batch (loss, gradient clipping, fused AdamW); only
the forward its teacher-forced pass takes differs. Steps alternate between the two (one, the other, ...), so that
the machine's drift falls on both alike, and each reports its median step. 15 positions is about
the mean width of the MLE recipe's batches (each cut to its longest sentence), 21 the widest. Each
step's FLOPs (``speed.train_flops_per_token``) are given as a fraction of the fp32 matmul ceiling,
measured in the same process before and after the steps (the lower of the two).

Then the bar's own measurement (issue #6: the MLE step at the larger size as a fraction of the
ceiling), ``speed.py``'s: the MLE recipe at d256 on its real batches, timed from its own log, run
in turn with the Hugging Face forward and with textgan's, three times each.

Then the vocabulary head alone (``fast_forward.head_logprobs``): target log-probabilities and their
gradients from the logits whole (a log-softmax over all of them, gathered) or by the row-chunked
Function textgan takes on a CPU from ``fast_forward.CHUNKED_HEAD_LOGITS`` logits on, at several
vocabulary sizes, 64 x 21 and 192 x 21 rows of width 192.

Last, the style-transfer recipe as ``recipes/yelp_transfer.yaml`` sets it up (d192, 3 layers, 64
Yelp sentences a step; ``../shared/data/yelp``, skipped where it is absent), whose left-padded
prompts take the forward with a key mask: its self-reconstruction warm-up steps and its
adversarial steps (sampled rewrites, cycle and policy rows), three runs each with the Hugging Face
forward, textgan's with the head's logits whole, and textgan's as it runs by default.
Writes benchmarks/results/train_forward.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _record import record
from speed import BATCH, VOCAB, matmul_ceiling, mean_batch_width, step_seconds, train_flops_per_token

from textgan.models import build_generator, fast_forward
from textgan.training import adam, mle_step

ROOT = Path(__file__).resolve().parents[1]
YELP = ROOT.parent / "shared" / "data" / "yelp"
SIZES = {"default (d128, 2 layers)": {"d_model": 128, "n_layers": 2}, "4x (d256, 2 layers)": {"d_model": 256, "n_layers": 2}}
FORWARDS = ("Hugging Face", "textgan")
TRANSFER_FORWARDS = ("Hugging Face", "textgan, whole logits", "textgan")


@contextlib.contextmanager
def taking(forward: str):
    """Within it, textgan's teacher-forced passes take ``forward``: its own where it applies, as by
    default ("textgan"), the Hugging Face one (``fast_forward.applies`` answering no), or its own with
    the head's logits always whole ("textgan, whole logits")."""
    applies, chunked = fast_forward.applies, fast_forward.CHUNKED_HEAD_LOGITS
    if forward == "Hugging Face":
        fast_forward.applies = lambda model, device_type: False
    elif forward == "textgan, whole logits":
        fast_forward.CHUNKED_HEAD_LOGITS = float("inf")
    try:
        yield
    finally:
        fast_forward.applies, fast_forward.CHUNKED_HEAD_LOGITS = applies, chunked


def compare(size: dict, width: int, steps: int, warmup: int) -> dict:
    """Median seconds of an MLE step by each forward, ``steps`` of each, alternating."""
    torch.manual_seed(0)
    model = build_generator(VOCAB, bos_id=1, eos_id=2, pad_id=0, **size)
    optimizer = adam(model.parameters(), lr=1e-4)
    batch = torch.randint(3, VOCAB, (BATCH, width + 1))
    batch[:, 0] = 1
    times = {name: [] for name in FORWARDS}
    for i in range(warmup + steps):
        for name in FORWARDS:
            with taking(name):
                start = time.perf_counter()
                mle_step(model, optimizer, batch, eos_id=2)
                seconds = time.perf_counter() - start
            if i >= warmup:
                times[name].append(seconds)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def recipe_steps(size: dict, steps: int, runs: int) -> dict:
    """Seconds per MLE recipe step (``speed.step_seconds``), ``runs`` runs with each forward in turn."""
    seconds = {name: [] for name in FORWARDS}
    for _ in range(runs):
        for name in FORWARDS:
            with taking(name):
                seconds[name].append(step_seconds("mle", size, steps, {}, "cpu"))
    return seconds


HEAD_SIZES = ((1344, 428), (1344, 4096), (1344, 9327), (4032, 2048), (4032, 4096), (4032, 9327))


def head_compare(rows: int, vocab: int, steps: int, width: int = 192) -> dict:
    """Median seconds of the head's forward and backward, whole logits against row chunks, alternating."""
    torch.manual_seed(0)
    hidden = torch.randn(rows, width, requires_grad=True)
    weight = (torch.randn(vocab, width) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (rows,))
    chunk = fast_forward.head_block_rows(vocab)  # as head_logprobs chooses
    ways = {"whole": lambda: torch.log_softmax(hidden @ weight.t(), -1).gather(1, targets[:, None]).squeeze(1),
            "chunked": lambda: fast_forward._HeadLogProbs.apply(hidden, weight, targets, chunk)}
    times = {name: [] for name in ways}
    for _ in range(steps):
        for name, way in ways.items():
            hidden.grad = weight.grad = None
            start = time.perf_counter()
            way().sum().backward()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def transfer_steps(warmup_steps: int, adversarial_steps: int, runs: int, data: Path = YELP,
                   batch_size: int | None = None) -> dict:
    """Mean seconds of the style-transfer recipe's warm-up and adversarial steps (from its log, the
    first two of each kind left out), ``runs`` runs with each forward in turn, on the style folder ``data``,
    with the preset's batch or ``batch_size``."""
    from textgan.recipes import load_recipe

    module, config_cls = load_recipe("style_transfer")
    preset = yaml.safe_load((ROOT / "recipes" / "yelp_transfer.yaml").read_text())
    preset = {k: preset[k] for k in ("d_model", "n_layers", "n_heads", "max_length", "batch_size")}
    preset["batch_size"] = batch_size or preset["batch_size"]
    seconds = {name: {"warm-up": [], "adversarial": []} for name in TRANSFER_FORWARDS}
    for _ in range(runs):
        for name in TRANSFER_FORWARDS:
            with tempfile.TemporaryDirectory() as tmp, taking(name):
                config = config_cls(out_dir=tmp, data=str(data), steps=warmup_steps + adversarial_steps,
                                    warmup_steps=warmup_steps, log_every=1, eval_every=10**6,
                                    checkpoint_every=10**6, print_samples=0, **preset)
                config.check()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    module.main(config)
                log = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            times = {row["step"]: row["time"] for row in log if "time" in row and "step" in row}
            end = warmup_steps + adversarial_steps
            seconds[name]["warm-up"].append((times[warmup_steps] - times[2]) / (warmup_steps - 2))
            seconds[name]["adversarial"].append((times[end] - times[warmup_steps + 2]) / (adversarial_steps - 2))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, warmup, n = (3, 1, 512) if args.quick else (60, 5, 2048)
    before, _ = matmul_ceiling(n, repeats=10)
    rows = []
    for name, size in SIZES.items():
        for width in (15, 21):
            seconds = compare(size, width, steps, warmup)
            flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, width) * BATCH * width
            rows.append({"size": name, "width": width, "seconds": seconds, "flops": flops})
            print(f"{name}, {width} positions: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()),
                  flush=True)
    size = SIZES["4x (d256, 2 layers)"]
    recipe_steps_n = 6 if args.quick else 20
    recipe = recipe_steps(size, recipe_steps_n, 1 if args.quick else 3)
    width = mean_batch_width(recipe_steps_n)
    recipe_flops = train_flops_per_token(size["d_model"], size["n_layers"], VOCAB, width) * BATCH * width
    ceiling = min(before, matmul_ceiling(n, repeats=10)[0])
    lines = [(f"MLE steps, batch 64, vocabulary {VOCAB}; median of {steps} steps of each forward, alternating. fp32 "
              f"matmul ceiling ({n}x{n}, the lower of before and after): **{ceiling:.1f} GFLOP/s**."), "",
             "| generator | positions | Hugging Face forward (of ceiling) | textgan forward (of ceiling) | speed-up |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        hf, ours = row["seconds"]["Hugging Face"], row["seconds"]["textgan"]
        share = {k: row["flops"] / v / 1e9 / ceiling for k, v in row["seconds"].items()}
        lines.append(f"| {row['size']} | {row['width']} | {hf * 1e3:.1f} ms ({share['Hugging Face']:.0%}) "
                     f"| {ours * 1e3:.1f} ms ({share['textgan']:.0%}) | {hf / ours:.2f}x |")
    lines += ["", (f"The MLE recipe at d256 (batch 64, its real batches: {width:.1f} positions on average), seconds per "
                   f"step from its log, runs in turn, each as a fraction of the ceiling:"), "",
              "| forward | runs | of the ceiling |", "|---|---|---|"]
    for name, seconds in recipe.items():
        lines.append(f"| {name} | {', '.join(f'{s * 1e3:.1f} ms' for s in seconds)} "
                     f"| {', '.join(f'{recipe_flops / s / 1e9 / ceiling:.0%}' for s in seconds)} |")
    head = []
    for rows, vocab in HEAD_SIZES:
        head.append({"rows": rows, "vocab": vocab, "seconds": head_compare(rows, vocab, 2 if args.quick else 30)})
    lines += ["", (f"The vocabulary head alone (width 192): target log-probabilities, forward and backward, from the "
                   f"whole logits or in blocks of rows (`fast_forward._HeadLogProbs`, which `head_logprobs` takes "
                   f"from {fast_forward.CHUNKED_HEAD_LOGITS:,} logits on); medians, alternating:"), "",
              "| rows | vocabulary | whole logits | row blocks | speed-up | `head_logprobs` takes |",
              "|---:|---:|---:|---:|---:|---|"]
    for row in head:
        whole, chunked = row["seconds"]["whole"], row["seconds"]["chunked"]
        taken = "row blocks" if row["rows"] * row["vocab"] >= fast_forward.CHUNKED_HEAD_LOGITS else "whole logits"
        lines.append(f"| {row['rows']:,} | {row['vocab']:,} | {whole * 1e3:.1f} ms | {chunked * 1e3:.1f} ms "
                     f"| {whole / chunked:.2f}x | {taken} |")
    transfer = None
    if YELP.is_dir():
        if args.quick:  # a smoke run: the first 2,000 lines of each file, so that reading them takes no time
            with tempfile.TemporaryDirectory() as subset:
                for path in YELP.iterdir():
                    first = path.read_text(encoding="utf-8").splitlines(keepends=True)[:2000]
                    (Path(subset) / path.name).write_text("".join(first), encoding="utf-8")
                transfer = transfer_steps(3, 3, 1, Path(subset), batch_size=16)
        else:
            transfer = transfer_steps(20, 20, 3)
        lines += ["", ("The style-transfer recipe (`recipes/yelp_transfer.yaml`'s model: d192, 3 layers, 64 Yelp "
                       "sentences a step, 9,327 words), mean seconds a step from its log, runs in turn (textgan's "
                       "forward: left-padded prompts with a key mask, and the row-chunked head):"), "",
                  ("| steps | Hugging Face forward | textgan forward, whole logits | textgan forward, row-chunked head "
                   "| speed-up (medians) |"), "|---|---|---|---|---:|"]
        for kind in ("warm-up", "adversarial"):
            times = [transfer[name][kind] for name in TRANSFER_FORWARDS]
            lines.append("| " + " | ".join([kind] + [", ".join(f"{s * 1e3:.0f} ms" for s in t) for t in times])
                         + f" | {statistics.median(times[0]) / statistics.median(times[-1]):.2f}x |")
    else:
        print(f"note: {YELP} not found; the style-transfer rows are left out")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if not args.quick:
        record("train_forward", {"matmul_ceiling_gflop_s": ceiling, "steps": steps, "rows": rows,
                                 "recipe": {"width": width, "flops": recipe_flops, "seconds": recipe},
                                 "head": head, "style_transfer": transfer}, markdown)


if __name__ == "__main__":
    main()
