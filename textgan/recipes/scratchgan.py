"""ScratchGAN-style training (d'Autume et al. 2019): dense per-token rewards, no pretraining needed.

The generator writes a batch of sentences; a per-token discriminator scores every prefix,
giving a dense reward for every token; discounted returns minus a moving-average baseline
weight the policy-gradient (REINFORCE) update; then the discriminator learns to tell the
batch from real sentences. By default the generator starts from random weights (ScratchGAN's
pure setting); ``pretrain_steps`` MLE steps can run first.

By default (``expected_reward``) D values every candidate token at every position, its logit of
a prefix being the sum of its tokens' values, and the generator's update takes the expectation
of each position's value under its own distribution, exactly, over the whole vocabulary: the
sampled token's REINFORCE term, the noisiest part of the estimate, is gone, and REINFORCE is
left only for the discounted values of the tokens after it. ``expected_reward=false`` is
ScratchGAN's own estimator (REINFORCE on the sampled token, rewards from D's prefix logits).

    python -m textgan.recipes.scratchgan [PRESET.yaml] [key=value ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, arg, check_bounds, check_choice, check_unit_interval
from ..data import batch_at, sequence_mask
from ..distributed import local_batch_size, seed_step, shard
from ..embeddings import init_embedding, ppmi_vectors
from ..losses import discriminator_loss
from ..models.discriminator import build_discriminator
from ..models.generator import causal_lm_logits, token_logprobs
from ..rl import (
    REWARD_KINDS,
    EMABaseline,
    advantage_scale,
    baseline_values,
    center_rewards,
    discounted_returns,
    loss_mean,
    loss_means,
    masked_mean,
    normalize_advantages,
    reinforce_loss,
    reward_increments,
    rewards_from_logits,
)
from ..sampling import sample
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
)


@dataclass
class ScratchGANConfig(GANConfig):
    """Train a text GAN with dense per-token rewards (ScratchGAN)."""

    out_dir: str = arg("runs/scratchgan", "run folder: config, metrics log, checkpoints, samples, exported generator")
    pretrain_steps: int = arg(0, "MLE warm-up steps before adversarial training; 0 is ScratchGAN's pure setting")
    steps: int = arg(1800, "adversarial steps (one generator update each)")
    batch_size: int = arg(128, "sentences per step")
    gen_lr: float = arg(3e-4, "generator Adam learning rate in adversarial steps (a pretrained generator wants "
                        "a fine-tuning step, e.g. 1e-5)")
    betas: str = arg("0.5,0.999", "Adam betas of the adversarial optimizers")
    disc_steps: int = arg(3, "discriminator updates per generator update")
    discount: float = arg(0.23, "discount of future rewards in the returns (ScratchGAN: 0.23)")
    reward: str = arg("scratchgan", "reward from D's logit with expected_reward=false: scratchgan (2·sigmoid−1), "
                      "log_d, logit")
    baseline_decay: float = arg(0.9, "decay of the ema baseline")
    center_rewards: bool = arg(True, "subtract each position's batch-mean reward before discounting "
                               "(stops negative rewards from favouring short samples)")
    reward_increments: bool = arg(False, "with expected_reward=false, reward each token by the change it makes to "
                                  "D's reward of the prefix (r_t − r_(t−1)) instead of the prefix's reward")
    normalize_advantages: bool = arg(True, "scale advantages to zero mean and unit variance")
    entropy_coef: float = arg(0.05, "weight of a bonus for the entropy of G's next-token distributions at the "
                              "positions it sampled (0.05 since 2026-12-04; 0 before)")
    disc: str = arg("lstm", "per-token discriminator: lstm or transformer")
    disc_layers: int = arg(1, "discriminator layers")
    disc_lm_weight: float = arg(0.0, "weight of the discriminator's auxiliary next-token loss on real sentences "
                                "(0: no LM head); the generator never sees it")
    expected_reward: bool = arg(True, "D values every candidate token (a prefix's logit is the sum of its tokens' "
                                "values) and G's update takes each token's expected value over the whole "
                                "vocabulary, REINFORCE only for later rewards; rewards are D's logit increments")
    embed_init: str = arg("ppmi", "initial token embeddings of G and D: random, or ppmi (word vectors from the "
                          "training corpus's co-occurrences, as ScratchGAN starts from GloVe; G's only with a new model)")

    gen_average: float = arg(0.995, "decay of a moving average of G's weights, which is evaluated and exported in "
                              "place of the last weights (GAN weight averaging); 0: off")
    gen_lr_decay: float = arg(0.3, "fraction of the adversarial steps, at the end, over which G's learning rate "
                              "falls linearly towards 0, so that training ends on small steps; 0: constant")

    def check(self) -> None:
        super().check()
        check_choice("reward", self.reward, REWARD_KINDS)
        check_choice("disc", self.disc, ("lstm", "transformer"))
        check_choice("embed_init", self.embed_init, ("random", "ppmi"))
        check_unit_interval(self, ("baseline_decay",))
        check_unit_interval(self, ("discount",), closed=True)
        check_bounds(self, positive=("disc_layers",), non_negative=("disc_lm_weight",))
        if self.expected_reward and self.disc_lm_weight:
            raise ConfigError("disc_lm_weight needs D's prefix head: add expected_reward=false")


def main(config: ScratchGANConfig) -> dict:
    run = Run(config)
    seed_everything(config.seed)
    setup = prepare(config, run)
    generator, device = compile_forward(setup.generator, config), setup.device
    discriminator = recipe_discriminator(config, len(setup.tokenizer), setup.pad_id).to(device)
    if config.embed_init == "ppmi":
        init_from_corpus(config, setup, discriminator)
    optimizers = gan_optimizers(config, generator, discriminator)
    ema = EMABaseline(config.max_length + 1, config.baseline_decay)
    modules = {"generator": generator, "discriminator": discriminator}
    average, evaluated = generator_average(config, setup, modules)
    state = restore(run, modules, optimizers, device)
    if state:
        ema.load_state_dict(state["ema"])
    start = state["step"] if state else 0
    if average is not None:
        average.updates = start  # one update per step, so its warm-up count is the step count
    total = config.pretrain_steps + config.steps
    prompt = torch.full((local_batch_size(config.batch_size), 1), setup.bos_id, dtype=torch.long, device=device)

    with progress(total, start, "scratchgan") as bar:
        for step in range(start, total):
            seed_step(config.seed, step)
            real = shard(batch_at(setup.train_ids, config.batch_size, step, config.seed, setup.eos_id)).to(device)
            with autocast(config, device):
                if step < config.pretrain_steps:
                    values = {"gen/mle_loss": mle_step(generator, optimizers["mle"], real, setup.eos_id, config.grad_clip)}
                else:
                    lr = schedule_gen_lr(optimizers["generator"], config, step - config.pretrain_steps)
                    values = adversarial_step(config, generator, discriminator, optimizers, ema, prompt, real, setup)
                    values["gen/lr"] = lr
            if average is not None:
                average.update(generator)
            bar.update(1)
            periodic(run, evaluated, config, step + 1, values, bar, modules, optimizers, {"ema": ema.state_dict()},
                     last_step=total)

    scores, samples = evaluate(evaluated, config)
    run.write_samples(total, samples)
    return finish(run, evaluated, scores)


def recipe_discriminator(config: ScratchGANConfig, vocab_size: int, pad_id: int) -> torch.nn.Module:
    """The per-token discriminator ``config`` describes (with token values for ``expected_reward``)."""
    return build_discriminator(config.disc, vocab_size, pad_id, dim=config.disc_dim, n_layers=config.disc_layers,
                               dropout=config.disc_dropout, spectral_norm=config.spectral_norm,
                               max_positions=config.max_length + 2, lm_head=config.disc_lm_weight > 0,
                               token_values=config.expected_reward)


def init_from_corpus(config: ScratchGANConfig, setup, discriminator) -> None:
    """Start D's embeddings, and a new generator's, from PPMI word vectors of the training sentences."""
    own_generator = not config.model
    dim = max(config.disc_dim, config.d_model if own_generator else 0)
    vectors = ppmi_vectors(setup.train_ids, len(setup.tokenizer), dim, setup.pad_id)
    init_embedding(discriminator.embedding.weight, vectors[:, : config.disc_dim])
    if own_generator:
        init_embedding(setup.generator.get_input_embeddings().weight, vectors[:, : config.d_model])


def expected_reward_update(config, generator, discriminator, ema, fake, ids):
    """G's loss when D values every candidate token: the expectation of each position's value under
    G's distribution (exact over the vocabulary, no sampling noise), plus REINFORCE for the
    discounted values of the tokens after it. -> (loss, rewards (B, T), entropy (B, T))."""
    mask = fake.mask
    with torch.no_grad():
        discriminator.eval()  # its values without dropout's noise
        values = discriminator.token_values(fake.tokens)  # (B, T, V)
        discriminator.train()
    rewards = values.gather(-1, fake.tokens[..., None]).squeeze(-1) * mask  # D's logit increments
    reduce = ema.reduce  # under torchrun: the global batch's statistics
    scored = center_rewards(rewards, mask, reduce) if config.center_rewards else rewards
    future = discounted_returns(scored, mask, config.discount) - scored  # discount · R_(t+1)
    future_advantage = future - baseline_values(config.baseline, future, mask, ema, reduce)
    ema.update(future, mask)

    logp = torch.log_softmax(causal_lm_logits(generator, ids[:, :-1]).float(), dim=-1)  # (B, T, V)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    expected = (probs * values).sum(-1)  # (B, T), differentiable through G's distribution
    logprobs = logp.gather(-1, fake.tokens[..., None]).squeeze(-1)
    scale = 1.0
    if config.normalize_advantages:  # the spread of the sampled tokens' advantages, as REINFORCE's
        scale = advantage_scale(rewards - expected.detach() + future_advantage, mask, reduce=reduce)
    if not config.entropy_coef:
        return -loss_mean(expected + logprobs * future_advantage, mask) / scale, rewards, entropy
    policy, mean_entropy = loss_means((expected + logprobs * future_advantage, mask), (entropy, mask))
    return -policy / scale - config.entropy_coef * mean_entropy, rewards, entropy


def adversarial_step(config, generator, discriminator, optimizers, ema, prompt, real, setup) -> dict:
    # 1. sample a batch from G
    fake = sample(generator, prompt, config.max_length + 1, eos_id=setup.eos_id, pad_id=setup.pad_id)
    mask = fake.mask

    ids = torch.cat([prompt, fake.tokens], dim=1)
    if config.expected_reward:
        gen_loss, rewards, entropy = expected_reward_update(config, generator, discriminator, ema, fake, ids)
    else:
        # 2. score every prefix with D: dense per-token rewards
        with torch.no_grad():
            rewards = rewards_from_logits(discriminator(fake.tokens), config.reward)  # (B, T)
        reduce = ema.reduce  # under torchrun: the global batch's statistics
        scored = reward_increments(rewards, mask) if config.reward_increments else rewards
        scored = center_rewards(scored, mask, reduce) if config.center_rewards else scored

        # 3. discounted returns and the baseline
        returns = discounted_returns(scored, mask, config.discount)
        advantages = returns - baseline_values(config.baseline, returns, mask, ema, reduce)
        if config.normalize_advantages:
            advantages = normalize_advantages(advantages, mask, reduce=reduce)
        ema.update(returns, mask)

        # 4. policy-gradient step for G
        logprobs, entropy = token_logprobs(generator, ids, with_entropy=True)
        gen_loss = reinforce_loss(logprobs, advantages, mask, entropy, config.entropy_coef)
    gen_loss = optimizer_step(gen_loss, optimizers["generator"], generator, config.grad_clip)

    # 5. D step(s): real sentences against this batch of samples
    real_tokens = real[:, 1:]
    real_mask = sequence_mask(real_tokens, setup.eos_id)
    lm_loss = None
    for _ in range(config.disc_steps):
        real_hidden = discriminator.hidden(real_tokens)  # kept for the auxiliary LM loss
        real_logits, fake_logits = discriminator.score(real_hidden, real_tokens), discriminator(fake.tokens)
        disc_loss = discriminator_loss(real_logits, fake_logits, real_mask, mask, objective=config.disc_objective)
        if config.disc_lm_weight:
            lm_loss = discriminator.lm_loss(real_hidden, real_tokens, real_mask)
            disc_loss = disc_loss + config.disc_lm_weight * lm_loss
        disc_loss = optimizer_step(disc_loss, optimizers["discriminator"], discriminator, config.grad_clip)

    return {
        "gen/pg_loss": gen_loss,
        "gen/reward": float(masked_mean(rewards, mask)),
        "gen/entropy": float(masked_mean(entropy.detach(), mask)),
        "gen/length": float(fake.lengths.float().mean()),
        "disc/loss": disc_loss,
        "disc/real_acc": float(masked_mean((real_logits > 0).float(), real_mask)),
        "disc/fake_acc": float(masked_mean((fake_logits < 0).float(), mask)),
        **({"disc/lm_loss": float(lm_loss.detach())} if lm_loss is not None else {}),
    }


if __name__ == "__main__":
    from ..distributed import exit_process
    from ._cli import run_recipe

    exit_process(run_recipe(ScratchGANConfig, main, "python -m textgan.recipes.scratchgan"))
