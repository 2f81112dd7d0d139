"""bf16 autocast and torch.compile: what each option buys per training step, by model size.

    python benchmarks/precision.py            # mle and scratchgan, three generator sizes, four settings
    python benchmarks/precision.py --quick    # a smoke run (fp32, and bf16 with compile), not recorded

For each generator size and each setting (fp32 or bf16 autocast; eager or compiled forward) it runs
the real recipe on the embedded grammar corpus, batch 64, and takes the mean wall time per step from
the recipe's own log, after warm-up steps that absorb compilation (and the recompile for dynamic
shapes). Also records the machine's fp32 and bf16 matmul ceilings, since bf16 only pays on hardware
with fast bf16 matmuls (AMX on recent Xeons, tensor cores on GPUs). Writes
benchmarks/results/precision.{json,md}.
"""

from __future__ import annotations

import argparse

import torch
from _record import record
from sampler_speed import best_of
from speed import BATCH, step_seconds

SIZES = {"d128, 2 layers (default)": {"d_model": 128, "n_layers": 2, "n_heads": 4},
         "d256, 2 layers": {"d_model": 256, "n_layers": 2, "n_heads": 4},
         "d512, 4 layers": {"d_model": 512, "n_layers": 4, "n_heads": 8}}
SETTINGS = {"fp32": {}, "bf16": {"precision": "bf16"}, "fp32 + compile": {"compile": True},
            "bf16 + compile": {"precision": "bf16", "compile": True}}
RECIPES = {"mle": {}, "scratchgan": {"pretrain_steps": 0}}


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_of(lambda: a @ b, 5) / 1e9


def step_ms(recipe: str, size: dict, setting: dict, steps: int, warmup: int) -> float:
    """Mean ms per step on the CPU after ``warmup`` steps (which absorb compilation)."""
    torch._dynamo.reset()  # a fresh compile cache: torch stops compiling a function after a few recompiles
    return 1000 * step_seconds(recipe, size, steps, {**setting, **RECIPES[recipe]}, "cpu", warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, warmup = (8, 4) if args.quick else (40, 8)
    sizes = dict(list(SIZES.items())[:1]) if args.quick else SIZES
    # --quick: both options in one setting, so that a cold torch.compile cache costs one compilation a recipe
    settings = {name: SETTINGS[name] for name in ("fp32", "bf16 + compile")} if args.quick else SETTINGS
    ceilings = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"matmul ceiling: fp32 {ceilings['fp32']:.0f} GFLOP/s, bf16 {ceilings['bf16']:.0f} GFLOP/s", flush=True)
    rows = []
    for recipe in RECIPES:
        for size_name, size in sizes.items():
            for setting_name, setting in settings.items():
                ms = step_ms(recipe, size, setting, steps, warmup)
                rows.append({"recipe": recipe, "size": size_name, "setting": setting_name, "step_ms": ms})
                print(f"{recipe:<11} {size_name:<26} {setting_name:<15} {ms:8.1f} ms/step", flush=True)
    lines = ["| recipe | generator | " + " | ".join(settings) + " |", "|---|---|" + "---:|" * len(settings)]
    for recipe in RECIPES:
        for size_name in sizes:
            cells = {r["setting"]: r["step_ms"] for r in rows if r["recipe"] == recipe and r["size"] == size_name}
            base = cells["fp32"]
            lines.append(f"| {recipe} | {size_name} | " + " | ".join(
                f"{cells[s]:.0f} ms ({base / cells[s]:.2f}x)" for s in settings) + " |")
    md = (f"# bf16 autocast and torch.compile: ms per training step (speed-up over fp32 eager)\n\n"
          f"Batch {BATCH}, embedded grammar corpus; mean over steps {warmup + 1}-{steps} of each run (compilation falls "
          f"in the warm-up). Matmul ceiling (2048x2048): fp32 {ceilings['fp32']:.0f} GFLOP/s, "
          f"bf16 {ceilings['bf16']:.0f} GFLOP/s. Sampling runs in fp32 and eager in every setting "
          f"(`sample_precision=fp32`, the default).\n\n"
          + "\n".join(lines) + "\n")
    print(md)
    if not args.quick:
        record("precision", {"ceilings_gflops": ceilings, "rows": rows}, md)


if __name__ == "__main__":
    main()
