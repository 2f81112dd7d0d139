"""Unpaired style transfer: denoising, cycle reconstruction and a style adversary, no parallel data.

One causal LM rewrites ``<style:src> x <sep> <style:tgt>`` into y (layout and design in
:mod:`textgan.transfer`). Each step takes a batch of real sentences x of style s, picks a
target style t != s for each, and

1. samples rewrites ŷ ~ G(· | x, t) with the KV-cache sampler (no gradient);
2. scores ŷ: the style reward log D(t | ŷ) from a CNN discriminator whose classes are the
   styles plus "rewrite", and the content reward log G(x | ŷ, s), the cycle log-likelihood
   of getting x back (per token);
3. updates G with one loss over three kinds of rows, in one forward pass:
   - self-reconstruction: noisy x (dropped and locally shuffled words) into style s -> x;
     a share ``lm_fraction`` of these rows has an empty source, which makes G a
     style-conditioned language model as well (``textgan sample --style``);
   - cycle reconstruction: ŷ into style s -> x (teacher-forced back-translation);
   - REINFORCE on ŷ with the summed reward minus a moving-average baseline
     (``textgan.rl``: the core's returns, baselines and policy-gradient loss);
4. updates D: real sentences are their style, rewrites are "rewrite".

The first ``warmup_steps`` steps train self-reconstruction only, so that rewrites start from
a model that can copy. ``classifier=DIR`` (a ``textgan.recipes.classifier`` run) makes each
evaluation report style accuracy by that judge; otherwise D's style classes judge.

    python -m textgan.recipes.style_transfer recipes/yelp_transfer.yaml
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import (
    ConfigError,
    arg,
    check_bounds,
    check_choice,
    check_heads,
    check_unit_interval,
    check_vocab_size,
    parse_betas,
)
from ..data import json_text, sequence_mask, step_seed, write_text_atomic
from ..distributed import seed_step, shard
from ..losses import mle_loss
from ..models.classifier import SentenceClassifier, classify, load_classifier
from ..rl import BASELINE_KINDS, EMABaseline, baseline_values, discounted_returns, loss_mean, reinforce_loss
from ..sampling import sample
from ..tokenization import token_ids
from ..training import (
    SAMPLE_PRECISION,
    BaseConfig,
    Run,
    adam,
    autocast,
    check_sample_precision,
    compile_forward,
    optimizer_step,
    periodic,
    progress,
    resolve_device,
    restore,
    seed_everything,
)
from ..transfer import (
    DECODING,
    SEP,
    Layout,
    Rewriter,
    content_reward,
    discriminator_logits,
    load_style_data,
    overlap,
    style_reward,
    style_token,
    target_logprobs,
    word_tensor,
)


@dataclass
class StyleTransferConfig(BaseConfig):
    """Train an unpaired style-transfer model (denoising + cycle reconstruction + style adversary)."""

    out_dir: str = arg("runs/style_transfer", "run folder: config, metrics log, checkpoints, samples, exported model")
    data: str = arg("", "folder with train.<style> files (dev.<style>, test.<style>, reference.<style> optional)")
    normalize: bool = arg(True, "lower-case and split punctuation and clitics (Yelp's tokenization)")
    vocab_size: int = arg(0, "word vocabulary size; 0: every training word")
    max_length: int = arg(20, "longest sentence in tokens: longer training sentences are dropped, longer inputs cut")
    model: str = arg("", "pretrained causal LM to start from (folder or hub name); empty: a new small Llama")
    trust_remote_code: bool = arg(False, "allow a model folder to run its own code (only for folders you trust)")
    d_model: int = arg(256, "model width (new model)")
    n_layers: int = arg(4, "layers (new model)")
    n_heads: int = arg(4, "attention heads (new model)")
    d_ff: int = arg(0, "MLP width; 0: 4 * d_model")
    steps: int = arg(3000, "training steps")
    warmup_steps: int = arg(300, "first steps with self-reconstruction only")
    batch_size: int = arg(64, "source sentences per step, the same number from each style")
    lr: float = arg(1e-3, "AdamW learning rate of the rewriter in the warm-up steps")
    adv_lr: float = arg(5e-4, "AdamW learning rate of the rewriter after the warm-up")
    weight_decay: float = arg(0.01, "AdamW weight decay of the rewriter")
    noise_drop: float = arg(0.1, "self-reconstruction noise: probability of dropping each source word")
    noise_shuffle: float = arg(0.0, "self-reconstruction noise: words move at most this many places")
    lm_fraction: float = arg(0.1, "share of self-reconstruction rows with an empty source (style LM)")
    cycle_weight: float = arg(1.0, "weight of the cycle-reconstruction loss")
    pg_weight: float = arg(1.0, "weight of the REINFORCE loss")
    style_weight: float = arg(1.0, "reward weight of log D(target style | rewrite)")
    content_weight: float = arg(1.0, "reward weight of the cycle log-likelihood per token")
    overlap_weight: float = arg(0.0, "reward weight of the rewrite's unigram/bigram F1 with its source (a minimal-edit "
                                     "reward; 0: off)")
    baseline: str = arg("ema", "policy-gradient baseline: ema, batch_mean, leave_one_out, none")
    baseline_decay: float = arg(0.9, "decay of the ema baseline")
    rollout_temperature: float = arg(1.0, "temperature of the sampled rewrites in training")
    sample_precision: str = SAMPLE_PRECISION
    disc_lr: float = arg(1e-3, "discriminator AdamW learning rate")
    disc_dim: int = arg(128, "discriminator embedding width and filters per width")
    disc_dropout: float = arg(0.3, "discriminator dropout")
    betas: str = arg("0.9,0.999", "Adam betas of both players")
    grad_clip: float = arg(1.0, "gradient-norm clipping")
    classifier: str = arg("", "style judge for evaluations: a classifier run folder (or its 'classifier' folder)")
    decoding: str = arg("greedy", "decoding of evaluation rewrites: greedy, sample, beam, rerank")
    eval_sentences: int = arg(200, "dev sentences per style rewritten at each evaluation")
    log_every: int = arg(25, "steps between metric log lines")
    eval_every: int = arg(500, "steps between evaluations")
    print_samples: int = arg(3, "rewrites printed at each evaluation")
    checkpoint_every: int = arg(250, "steps between checkpoints")
    keep_checkpoints: int = arg(2, "checkpoints kept on disk")

    def check(self) -> None:
        super().check()
        if not self.data:
            raise ConfigError("data is required: a folder with train.<style> files, e.g. data=../shared/data/yelp")
        check_sample_precision(self)
        check_bounds(self, positive=("max_length", "d_model", "n_layers", "n_heads", "batch_size", "lr", "adv_lr", "disc_lr",
                                     "disc_dim", "eval_sentences", "log_every", "eval_every", "checkpoint_every",
                                     "rollout_temperature", "grad_clip"),
                     non_negative=("vocab_size", "d_ff", "steps", "warmup_steps", "noise_shuffle", "cycle_weight",
                                   "pg_weight", "style_weight", "content_weight", "overlap_weight", "print_samples",
                                   "keep_checkpoints", "weight_decay"))
        check_unit_interval(self, ("noise_drop", "lm_fraction", "baseline_decay", "disc_dropout"))
        check_heads(self)
        check_vocab_size(self)
        check_choice("baseline", self.baseline, BASELINE_KINDS)
        check_choice("decoding", self.decoding, DECODING)
        parse_betas(self.betas)


# --------------------------------------------------------------------------- set-up


def build_tokenizer_and_model(config: StyleTransferConfig, styles: list[str], sentences: list[str]):
    """A word tokenizer with ``<sep>`` and one ``<style:...>`` token per style, and the causal LM."""
    from ..models.generator import build_generator, load_generator
    from ..tokenization import build_word_tokenizer, special_ids

    extra = [SEP, *(style_token(s) for s in styles)]
    if config.model:
        model, tokenizer = load_generator(config.model, trust_remote_code=config.trust_remote_code)
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.resize_token_embeddings(len(tokenizer))
        return tokenizer, model
    tokenizer = build_word_tokenizer(sentences, config.vocab_size or None)
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    bos, eos, pad = special_ids(tokenizer)
    model = build_generator(len(tokenizer), bos_id=bos, eos_id=eos, pad_id=pad, d_model=config.d_model,
                            n_layers=config.n_layers, n_heads=config.n_heads, d_ff=config.d_ff,
                            max_positions=2 * config.max_length + 8)
    return tokenizer, model


def encode_styles(layout: Layout, sentences: dict[str, list[str]]) -> tuple[dict[str, list[list[int]]], int]:
    """Word ids per style, dropping sentences longer than ``max_length``; returns ids and how many were dropped."""
    out, dropped = {}, 0
    for style, lines in sentences.items():
        ids = token_ids(layout.tokenizer, lines)
        out[style] = [i for i in ids if 0 < len(i) <= layout.max_length]
        dropped += len(ids) - len(out[style])
        if not out[style]:
            raise ConfigError(f"no {style} training sentence fits in max_length={layout.max_length}; raise max_length")
    return out, dropped


def noisy(words: list[int], rng: random.Random, drop: float, shuffle: float) -> list[int]:
    """Drop each word with probability ``drop`` (keeping one at least), then move words at most ``shuffle`` places."""
    kept = [w for w in words if rng.random() >= drop] or [rng.choice(words)]
    if shuffle > 0:
        keys = [i + rng.uniform(0, shuffle + 1) for i in range(len(kept))]
        kept = [w for _, w in sorted(zip(keys, kept), key=lambda kw: kw[0])]
    return kept


def batch_rows(ids: dict[str, list[list[int]]], styles: list[str], batch_size: int, step: int, seed: int):
    """Sources, their styles and target styles (indices), drawn evenly over the styles by (seed, step)."""
    generator = torch.Generator().manual_seed(step_seed(seed, step))
    per_style = max(1, batch_size // len(styles))
    sources, src, tgt = [], [], []
    for s, style in enumerate(styles):
        rows = torch.randint(len(ids[style]), (per_style,), generator=generator).tolist()
        others = torch.randint(len(styles) - 1, (per_style,), generator=generator).tolist()
        sources += [ids[style][i] for i in rows]
        src += [s] * per_style
        tgt += [o + (o >= s) for o in others]  # any style but s
    return sources, src, tgt


def stack_rows(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], pad_id: int):
    """Concatenate (prompt, prompt_mask, targets) groups: prompts left-padded, targets right-padded to one width."""
    P = max(p.shape[1] for p, _, _ in parts)
    T = max(t.shape[1] for _, _, t in parts)
    prompts, masks, targets = [], [], []
    for p, m, t in parts:
        prompts.append(F.pad(p, (P - p.shape[1], 0), value=pad_id))
        masks.append(F.pad(m, (P - m.shape[1], 0), value=False))
        targets.append(F.pad(t, (0, T - t.shape[1]), value=pad_id))
    return torch.cat(prompts), torch.cat(masks), torch.cat(targets)


# --------------------------------------------------------------------------- one step


def train_step(config, step, model, disc, optimizers, ema, layout: Layout, ids, device) -> dict:
    styles = layout.styles
    style_ids = [layout.style_ids[s] for s in styles]
    fake_class = len(styles)
    rng = random.Random(step_seed(config.seed, step))
    sources, src, tgt = (shard(part) for part in batch_rows(ids, styles, config.batch_size, step, config.seed))
    B = len(sources)
    src_tok, tgt_tok = [style_ids[s] for s in src], [style_ids[t] for t in tgt]

    # self-reconstruction rows: noisy x (or nothing) into its own style -> x
    noisy_sources = [[] if rng.random() < config.lm_fraction else
                     noisy(x, rng, config.noise_drop, config.noise_shuffle) for x in sources]
    parts = [(*layout.prompts(noisy_sources, src_tok, src_tok), layout.targets(sources))]
    adversarial = step >= config.warmup_steps
    if adversarial:
        # 1. sample rewrites into the target styles
        forward_prompt, forward_mask = layout.prompts(sources, src_tok, tgt_tok)
        forward_prompt, forward_mask = forward_prompt.to(device), forward_mask.to(device)
        rollout = sample(model, forward_prompt, layout.max_length + 1, eos_id=layout.eos_id, pad_id=layout.pad_id,
                         temperature=config.rollout_temperature, prompt_mask=forward_mask)
        rewrites = layout.words(rollout.tokens.cpu(), rollout.mask.cpu())
        # cycle rows: the rewrite back into the source style -> x; policy rows: x into the target -> the rewrite
        parts.append((*layout.prompts(rewrites, tgt_tok, src_tok), layout.targets(sources)))
        parts.append((forward_prompt.cpu(), forward_mask.cpu(), rollout.tokens.cpu()))

    prompt, prompt_mask, targets = (t.to(device) for t in stack_rows(parts, layout.pad_id))
    logprobs = target_logprobs(model, prompt, prompt_mask, targets)  # (rows, T)
    masks = sequence_mask(targets, layout.eos_id)
    rec_loss = mle_loss(logprobs[:B], masks[:B])
    values = {"gen/rec_loss": float(rec_loss.detach())}
    loss = rec_loss
    if adversarial:
        cycle_lp, cycle_mask = logprobs[B : 2 * B], masks[B : 2 * B]
        cycle_loss = mle_loss(cycle_lp, cycle_mask)
        policy_lp = logprobs[2 * B :, : rollout.tokens.shape[1]]
        policy_mask = rollout.mask.to(device)
        # 2. rewards: style by the discriminator, content by the cycle log-likelihood
        with torch.no_grad():
            style_logp = style_reward(disc, rewrites, torch.tensor(tgt), layout.pad_id)
            content = content_reward(cycle_lp, cycle_mask)
            reward = config.style_weight * style_logp + config.content_weight * content  # (B,)
            kept = torch.tensor([overlap(r, x) for r, x in zip(rewrites, sources)], device=device)
            reward = reward + config.overlap_weight * kept
            rewards = torch.zeros_like(policy_lp)
            last = (policy_mask.sum(1) - 1).clamp_min(0)
            rewards[torch.arange(B), last] = reward
            returns = discounted_returns(rewards, policy_mask, 1.0)  # every token of a rewrite gets its reward
            advantages = returns - baseline_values(config.baseline, returns, policy_mask, ema,
                                                   ema.reduce)  # the global batch's
            ema.update(returns, policy_mask)
        pg_loss = reinforce_loss(policy_lp, advantages, policy_mask)
        loss = loss + config.cycle_weight * cycle_loss + config.pg_weight * pg_loss
        values.update({"gen/cycle_loss": float(cycle_loss.detach()), "gen/pg_loss": float(pg_loss.detach()),
                       "reward/style_prob": float(style_logp.exp().mean()), "reward/content": float(content.mean()),
                       "reward/overlap": float(kept.mean()),
                       "gen/copy_rate": sum(r == x for r, x in zip(rewrites, sources)) / B,
                       "gen/length": float(rollout.lengths.float().mean())})
    values["gen/loss"] = optimizer_step(loss, optimizers["rewriter"], model, config.grad_clip)

    # 4. the discriminator: real sentences are their style, rewrites are "rewrite"
    if adversarial:
        labels = torch.tensor(src + [fake_class] * B, device=device)
        logits = disc(word_tensor(sources + rewrites, layout.pad_id).to(device))
        disc_loss = loss_mean(F.cross_entropy(logits, labels, reduction="none"))  # the global batch's
        values["disc/loss"] = optimizer_step(disc_loss, optimizers["discriminator"], disc, config.grad_clip)
        values["disc/acc"] = float((logits.argmax(-1) == labels).float().mean())
    return values


# --------------------------------------------------------------------------- evaluation


def transfer_scores(rewriter: Rewriter, sources: dict[str, list[str]], judge, decoding: str = "greedy",
                    references: dict[str, list[str]] | None = None, prefix: str = "eval") -> tuple[dict, list[str]]:
    """Rewrite every sentence of ``sources[style]`` into each other style; accuracy, self-BLEU, ref-BLEU, copy rate.

    ``judge(sentences, style)`` -> fraction judged to be in ``style``. ``references[style]``
    are human rewrites of ``sources[style]`` (two-style data). Returns scores and example lines.
    """
    from ..bleu import corpus_bleu

    scores: dict[str, float] = {}
    lines: list[str] = []
    all_out, all_in, all_ref, weighted_acc, count = [], [], [], 0.0, 0
    for source, texts in sources.items():
        for target in rewriter.styles:
            if target == source:
                continue
            outputs = rewriter.rewrite(texts, source, target, decoding=decoding)
            key = f"{prefix}/{source}->{target}"
            accuracy = judge(outputs, target)
            scores[f"{key}/accuracy"] = accuracy
            scores[f"{key}/self_bleu"] = corpus_bleu(outputs, texts)
            scores[f"{key}/copy"] = sum(o == i for o, i in zip(outputs, texts)) / len(texts)
            if references and source in references and len(rewriter.styles) == 2:
                scores[f"{key}/ref_bleu"] = corpus_bleu(outputs, references[source][: len(texts)])
                all_ref += references[source][: len(texts)]
            all_out += outputs
            all_in += texts
            weighted_acc += accuracy * len(texts)
            count += len(texts)
            lines += [f"[{source} -> {target}] {i}  =>  {o}" for i, o in zip(texts, outputs)]
    scores[f"{prefix}/accuracy"] = weighted_acc / max(count, 1)
    scores[f"{prefix}/self_bleu"] = corpus_bleu(all_out, all_in)
    scores[f"{prefix}/copy"] = sum(o == i for o, i in zip(all_out, all_in)) / max(len(all_in), 1)
    if len(all_ref) == len(all_out) and all_ref:
        scores[f"{prefix}/ref_bleu"] = corpus_bleu(all_out, all_ref)
        scores[f"{prefix}/geo_mean"] = math.sqrt(max(scores[f"{prefix}/accuracy"], 0) * 100 * scores[f"{prefix}/ref_bleu"])
    return scores, lines


def make_judge(config, disc, layout: Layout, device):
    """The style judge: the classifier folder if given, else the discriminator's style classes."""
    if config.classifier:
        model, tokenizer, info = load_classifier(config.classifier, device)
        labels = info["labels"]
        missing = set(layout.styles) - set(labels)
        if missing:
            raise ConfigError(f"classifier {config.classifier} does not know the style(s) {', '.join(sorted(missing))}; "
                              "train it on the same data folder")

        def judge(sentences, style):
            return sum(p == style for p in classify(model, tokenizer, sentences, labels)) / max(len(sentences), 1)

        return judge, "classifier"

    def disc_judge(sentences, style):
        words = token_ids(layout.tokenizer, list(sentences))
        logits = discriminator_logits(disc, words, layout.pad_id)[:, : len(layout.styles)]
        target = layout.styles.index(style)
        return float((logits.argmax(-1) == target).float().mean())

    return disc_judge, "discriminator"


# --------------------------------------------------------------------------- the recipe


def main(config: StyleTransferConfig) -> dict:
    from ..tokenization import load_run_tokenizer

    run = Run(config)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data = load_style_data(config.data, normalized=config.normalize, seed=config.seed)
    styles = data.styles
    tokenizer_dir = run.dir / "tokenizer"
    tokenizer, model = build_tokenizer_and_model(config, styles, [s for style in styles for s in data.train[style]])
    if config.resume and not config.model and (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = load_run_tokenizer(tokenizer_dir)  # the vocabulary the checkpoint was trained with
    else:
        run.keep_tokenizer(tokenizer)
    model = model.to(device)
    compile_forward(getattr(model, "base_model", None) or model.model, config)  # the body target_logprobs calls
    layout = Layout(tokenizer, styles, config.max_length)
    ids, dropped = encode_styles(layout, data.train)
    if dropped:
        print(f"note: {dropped} training sentences are longer than max_length={config.max_length} tokens and were dropped")
    disc = SentenceClassifier(len(tokenizer), len(styles) + 1, layout.pad_id, dim=config.disc_dim,
                              filters=config.disc_dim, dropout=config.disc_dropout).to(device)
    betas = parse_betas(config.betas)
    optimizers = {
        "rewriter": adam(model.parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay),
        "discriminator": adam(disc.parameters(), lr=config.disc_lr, betas=betas),
    }
    modules = {"rewriter": model, "discriminator": disc}
    ema = EMABaseline(config.max_length + 1, config.baseline_decay)
    judge, judge_name = make_judge(config, disc, layout, device)  # before restore: a bad classifier path changes nothing
    state = restore(run, modules, optimizers, device)
    if state:
        ema.load_state_dict(state["ema"])
    start = state["step"] if state else 0
    rewriter = Rewriter(model, tokenizer, styles, config.max_length, config.normalize, disc,
                        config.style_weight, config.content_weight, overlap_weight=config.overlap_weight)
    dev = {s: data.dev[s][: config.eval_sentences] for s in styles}
    # what checkpoints record of the model this run exports, so that a run stopped early can be used
    export = {"module": "rewriter", "config": json.loads(model.config.to_json_string(use_diff=False)),
              "transfer": rewriter.info(), "discriminator": "discriminator"}

    def evaluator():
        scores, lines = transfer_scores(rewriter, dev, judge, config.decoding)
        model.train()
        return scores, lines[:: max(1, len(lines) // max(config.print_samples, 1))][: config.print_samples]

    with progress(config.steps, start, "style transfer") as bar:
        for step in range(start, config.steps):
            model.train()
            seed_step(config.seed, step)
            for group in optimizers["rewriter"].param_groups:
                group["lr"] = config.lr if step < config.warmup_steps else config.adv_lr
            with autocast(config, device):
                values = train_step(config, step, model, disc, optimizers, ema, layout, ids, device)
            bar.update(1)
            periodic(run, None, config, step + 1, values, bar, modules, optimizers,
                     {"ema": ema.state_dict(), "export": export}, last_step=config.steps, evaluator=evaluator)

    if not run.writes:  # under torchrun, rank 0 exports and reports
        return {}
    run.export("model", rewriter.save)
    final = {s: data.test.get(s) or data.dev[s] for s in styles}
    split = "test" if all(s in data.test for s in styles) else "dev"
    references = data.references if split == "test" else None
    scores, lines = transfer_scores(rewriter, final, judge, config.decoding, references, prefix=split)
    scores["time/total_s"] = round(time.time() - run.started, 1)
    scores["judge"] = judge_name
    run.log(config.steps, {k: v for k, v in scores.items() if isinstance(v, float)})
    write_text_atomic(run.dir / "metrics.json", json_text(scores))
    write_text_atomic(run.dir / f"rewrites_{split}.txt", "\n".join(lines) + "\n")
    print(report(scores, split, judge_name))
    print(f"\nrun folder: {run.dir}  (model exported to {run.dir / 'model'}; "
          f"try: textgan transfer --model {run.dir / 'model'} --from {styles[0]} --to {styles[1]} \"...\"; "
          f"training curves: textgan plot {run.dir})")
    run.close()
    return scores


def report(scores: dict, split: str, judge_name: str) -> str:
    directions = sorted({k.split("/")[1] for k in scores if k.count("/") == 2 and k.startswith(split + "/")})
    lines = [f"{'direction':<16} {'accuracy':>9} {'self-BLEU':>10} {'ref-BLEU':>9} {'copy':>6}", "-" * 54]
    for name, key in [*((d, f"{split}/{d}") for d in directions), ("overall", split)]:
        ref = scores.get(f"{key}/ref_bleu")
        lines.append(f"{name:<16} {100 * scores[f'{key}/accuracy']:>8.1f}% {scores[f'{key}/self_bleu']:>10.1f} "
                     f"{(f'{ref:.1f}' if ref is not None else 'n/a'):>9} {100 * scores[f'{key}/copy']:>5.1f}%")
    lines.append(f"({split} set; style accuracy judged by the {judge_name}; BLEU-4 corpus, 0-100)")
    return "\n".join(lines)


if __name__ == "__main__":
    from ..distributed import exit_process
    from ._cli import run_recipe

    exit_process(run_recipe(StyleTransferConfig, main, "python -m textgan.recipes.style_transfer"))
