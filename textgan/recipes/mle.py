"""Maximum-likelihood training of the generator: the baseline every text GAN is measured against.

    python -m textgan.recipes.mle [PRESET.yaml] [key=value ...]
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import arg, check_bounds, check_unit_interval
from ..data import batch_at
from ..distributed import shard
from ..training import (
    Run,
    RunConfig,
    adam,
    autocast,
    compile_forward,
    evaluate,
    finish,
    linear_decay,
    mle_step,
    periodic,
    prepare,
    progress,
    restore,
    seed_everything,
    set_lr,
)


@dataclass
class MLEConfig(RunConfig):
    """Train the generator by maximum likelihood (teacher forcing)."""

    out_dir: str = arg("runs/mle", "run folder: config, metrics log, checkpoints, samples, exported generator")
    steps: int = arg(1500, "training steps")
    lr: float = arg(2e-3, "AdamW learning rate")
    weight_decay: float = arg(0.01, "AdamW weight decay")
    lr_decay: float = arg(0.0, "fraction of the steps, at the end, over which the learning rate falls linearly "
                          "towards 0 (a stronger baseline: see README); 0: constant")
    grad_clip: float = arg(1.0, "gradient-norm clipping")

    def check(self) -> None:
        super().check()
        check_bounds(self, positive=("lr", "grad_clip"), non_negative=("steps", "weight_decay"))
        check_unit_interval(self, ("lr_decay",), closed=True)


def main(config: MLEConfig) -> dict:
    run = Run(config)
    seed_everything(config.seed)
    setup = prepare(config, run)
    generator = compile_forward(setup.generator, config)
    optimizer = adam(generator.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    modules, optimizers = {"generator": generator}, {"generator": optimizer}
    state = restore(run, modules, optimizers, setup.device)
    start = state["step"] if state else 0

    with progress(config.steps, start, "mle") as bar:
        for step in range(start, config.steps):
            # 1. a batch of real sentences
            batch = shard(batch_at(setup.train_ids, config.batch_size, step, config.seed, setup.eos_id)).to(setup.device)
            # 2. one teacher-forced step, at the scheduled learning rate
            lr = set_lr(optimizer, linear_decay(config.lr, config.steps, config.lr_decay, step))
            with autocast(config, setup.device):
                loss = mle_step(generator, optimizer, batch, setup.eos_id, config.grad_clip)
            bar.update(1)
            periodic(run, setup, config, step + 1, {"gen/mle_loss": loss, "gen/lr": lr}, bar, modules, optimizers,
                     last_step=config.steps)

    scores, samples = evaluate(setup, config)
    run.write_samples(config.steps, samples)
    return finish(run, setup, scores)


if __name__ == "__main__":
    from ..distributed import exit_process
    from ._cli import run_recipe

    exit_process(run_recipe(MLEConfig, main, "python -m textgan.recipes.mle"))
