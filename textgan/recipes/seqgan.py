"""SeqGAN (Yu et al. 2017): MLE pretraining, discriminator pretraining, then adversarial training
with Monte-Carlo rollout rewards from a CNN sentence discriminator.

For every prefix of a sampled sentence, K completions are sampled from the generator and scored
by D; their mean probability of being real is the reward of the prefix's last token. With
``mle_weight`` > 0 each generator update adds that multiple of the teacher-forced NLL of a real
batch to the policy-gradient loss, which holds G near its MLE start while D's rewards are noisy.

    python -m textgan.recipes.seqgan [PRESET.yaml] [key=value ...]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import arg, check_bounds
from ..data import batch_at
from ..distributed import local_batch_size, seed_step, shard
from ..losses import discriminator_loss
from ..models.discriminator import build_discriminator
from ..models.generator import token_logprobs
from ..rl import EMABaseline, baseline_values, masked_mean, mc_rollout_rewards, reinforce_loss
from ..sampling import PrefixCompleter, eval_mode, sample
from ..training import (
    GANConfig,
    Run,
    autocast,
    compile_forward,
    evaluate,
    finish,
    gan_optimizers,
    generator_average,
    mle_step,
    optimizer_step,
    periodic,
    prepare,
    progress,
    restore,
    schedule_gen_lr,
    seed_everything,
    teacher_forced_nll,
)


@dataclass
class SeqGANConfig(GANConfig):
    """Train a text GAN the SeqGAN way: pretrain G and D, then policy gradient with MC rollouts."""

    out_dir: str = arg("runs/seqgan", "run folder: config, metrics log, checkpoints, samples, exported generator")
    pretrain_steps: int = arg(1000, "MLE steps for the generator before adversarial training")
    disc_pretrain_steps: int = arg(200, "discriminator steps on real sentences against generator samples")
    steps: int = arg(100, "adversarial steps (one generator update each)")
    num_rollouts: int = arg(8, "Monte-Carlo completions of every prefix (SeqGAN: 16)")
    disc_steps: int = arg(3, "discriminator updates per generator update")
    baseline: str = arg("batch_mean", "baseline: batch_mean, leave_one_out, none (SeqGAN used none), ema")
    disc_dim: int = arg(64, "CNN discriminator embedding width")
    disc_dropout: float = arg(0.25, "CNN discriminator dropout")
    disc_weight_decay: float = arg(1e-4, "discriminator weight decay (AdamW)")
    mle_weight: float = arg(0.0, "weight of a real batch's teacher-forced NLL added to each adversarial G update "
                            "(a hybrid objective that keeps G near its MLE start); 0: pure policy gradient, as SeqGAN")

    def check(self) -> None:
        super().check()
        check_bounds(self, positive=("num_rollouts",), non_negative=("disc_pretrain_steps", "mle_weight"))


def main(config: SeqGANConfig) -> dict:
    run = Run(config)
    seed_everything(config.seed)
    setup = prepare(config, run)
    generator, device = compile_forward(setup.generator, config), setup.device
    discriminator = build_discriminator("cnn", len(setup.tokenizer), setup.pad_id, dim=config.disc_dim,
                                        dropout=config.disc_dropout, spectral_norm=config.spectral_norm).to(device)
    optimizers = gan_optimizers(config, generator, discriminator)
    ema = EMABaseline(config.max_length + 1)
    modules = {"generator": generator, "discriminator": discriminator}
    average, evaluated = generator_average(config, setup, modules)
    state = restore(run, modules, optimizers, device)
    if state:
        ema.load_state_dict(state["ema"])
    start = state["step"] if state else 0
    if average is not None:
        average.updates = start  # one update per step, so its warm-up count is the step count
    g_end = config.pretrain_steps
    d_end = g_end + config.disc_pretrain_steps
    total = d_end + config.steps
    prompt = torch.full((local_batch_size(config.batch_size), 1), setup.bos_id, dtype=torch.long, device=device)

    def draw_fake():
        return sample(generator, prompt, config.max_length + 1, eos_id=setup.eos_id, pad_id=setup.pad_id)

    def disc_step(real, fake_tokens):
        loss = discriminator_loss(discriminator(real[:, 1:]), discriminator(fake_tokens), objective=config.disc_objective)
        return optimizer_step(loss, optimizers["discriminator"], discriminator, config.grad_clip)

    def seqgan_step(step: int, real: torch.Tensor) -> dict:
        if step < g_end:  # phase 1: MLE pretraining of G
            return {"gen/mle_loss": mle_step(generator, optimizers["mle"], real, setup.eos_id, config.grad_clip)}
        if step < d_end:  # phase 2: pretraining of D
            return {"disc/loss": disc_step(real, draw_fake().tokens)}
        # phase 3: adversarial training
        lr = schedule_gen_lr(optimizers["generator"], config, step - d_end)
        values = adversarial_step(config, generator, discriminator, optimizers["generator"], ema, prompt, setup,
                                  draw_fake(), real)
        values["gen/lr"] = lr
        for i in range(config.disc_steps):
            real_i = real if i == 0 else shard(batch_at(setup.train_ids, config.batch_size, step * 7919 + i,
                                                        config.seed, setup.eos_id)).to(device)
            values["disc/loss"] = disc_step(real_i, draw_fake().tokens)
        return values

    with progress(total, start, "seqgan") as bar:
        for step in range(start, total):
            seed_step(config.seed, step)
            real = shard(batch_at(setup.train_ids, config.batch_size, step, config.seed, setup.eos_id)).to(device)
            with autocast(config, device):
                values = seqgan_step(step, real)
            if average is not None:
                average.update(generator)
            bar.update(1)
            periodic(run, evaluated, config, step + 1, values, bar, modules, optimizers, {"ema": ema.state_dict()},
                     last_step=total)

    scores, samples = evaluate(evaluated, config)
    run.write_samples(total, samples)
    return finish(run, evaluated, scores)


def adversarial_step(config, generator, discriminator, gen_opt, ema, prompt, setup, fake, real) -> dict:
    """One generator update: ``fake`` a rollout sampled from G, ``real`` (B, L) a batch of real sentences
    starting with BOS, used when ``config.mle_weight`` > 0."""
    # 1. a batch sampled from G (fake)
    mask = fake.mask

    # 2. Monte-Carlo rollouts: K completions of every prefix, scored by D
    complete = PrefixCompleter(generator, prompt, fake.tokens, eos_id=setup.eos_id, pad_id=setup.pad_id)

    with torch.no_grad(), eval_mode(discriminator):
        rewards = mc_rollout_rewards(fake.tokens, mask, complete, lambda s: torch.sigmoid(discriminator(s)),
                                     config.num_rollouts)

    # 3. baseline: Q-values are already expected final rewards, so no discounting
    advantages = rewards - baseline_values(config.baseline, rewards, mask, ema, ema.reduce)  # the global batch's
    ema.update(rewards, mask)

    # 4. policy-gradient step for G, with the NLL of a real batch added at mle_weight
    logprobs = token_logprobs(generator, torch.cat([prompt, fake.tokens], 1))
    pg_loss = reinforce_loss(logprobs, advantages, mask)
    values = {"gen/reward": float(masked_mean(rewards, mask)), "gen/length": float(fake.lengths.float().mean())}
    loss = pg_loss
    if config.mle_weight > 0:
        nll = teacher_forced_nll(generator, real, setup.eos_id)
        loss = pg_loss + config.mle_weight * nll
        values["gen/mle_loss"] = float(nll.detach())
    done = optimizer_step(loss, gen_opt, generator, config.grad_clip)  # NaN where a non-finite step was skipped
    return {"gen/pg_loss": float(pg_loss.detach()) if math.isfinite(done) else done, **values}


if __name__ == "__main__":
    from ..distributed import exit_process
    from ._cli import run_recipe

    exit_process(run_recipe(SeqGANConfig, main, "python -m textgan.recipes.seqgan"))
