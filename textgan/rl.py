"""Policy-gradient maths for text GANs: small pure tensor functions.

Conventions: B rows, T positions; ``mask`` is True on real tokens (up to and including the
end token) and False on padding. Position t's action is token t, and its reward judges the
prefix that ends with it.

Statistics of the batch (means and spreads over rows) take an optional ``reduce``: a function
applied to the sums and counts they are made of before they are divided, (k, T) per position or
(k,) in all. Under torchrun it sums them over processes (:func:`textgan.distributed.summed`), so
that every process uses the statistics of the global batch, as one process given the whole batch
would; None (one process) leaves them as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import distributed

Reduce = Callable[[torch.Tensor], torch.Tensor]
REWARD_KINDS = ("scratchgan", "log_d", "logit")
BASELINE_KINDS = ("ema", "batch_mean", "leave_one_out", "none")


def _check_bt(function: str, **tensors: torch.Tensor | None) -> None:
    """A ValueError unless the given tensors are (B, T) and of one shape (a mask bool or float). Broadcasting would
    otherwise pair a (B, 1) or (T,) tensor, or a batch cut one position short, with every row or position and
    train on a wrong gradient without a word: the silent shape bug of text-GAN reward code."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1 or any(len(shape) != 2 for shape in shapes.values()):
        raise ValueError(f"{function} needs (B, T) tensors of one shape, got "
                         + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (0 if there are none). -> scalar. With ``reduce``
    (a statistic, not a loss: the sums lose their gradient) the mean over every process's entries."""
    total, count = _masked_sums(x, mask, reduce)
    return total / count.clamp_min(1.0)


def loss_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (every entry where None) as a loss of the global batch
    (0 if there are none). -> scalar, differentiable.

    Alone, :func:`masked_mean`. Under torchrun, this process's sum over the processes' mean count of entries,
    so that :func:`textgan.distributed.average_gradients`, which averages the processes' gradients, leaves the
    gradient of the mean over every process's entries: what one process given the whole batch would compute,
    however the entries fall between the processes (rows of different lengths, a batch the processes do not
    divide evenly). A mean per process, averaged, would weigh a token of a process with fewer of them more.
    Every process must call it alike: it sums the counts over processes."""
    return loss_means((x, mask))[0]


def loss_means(*terms: tuple[torch.Tensor, torch.Tensor | None]) -> list[torch.Tensor]:
    """:func:`loss_mean` of each ``(x, mask)``, with one all-reduce of their counts under torchrun."""
    sums, counts = zip(*(_masked_sums(x, torch.ones_like(x, dtype=torch.bool) if mask is None else mask, None)
                         for x, mask in terms))
    if distributed.active():
        totals = distributed.all_sum(torch.stack(counts).detach()).clamp_min(1.0)
        return [total * distributed.world_size() / count for total, count in zip(sums, totals)]
    return [total / count.clamp_min(1.0) for total, count in zip(sums, counts)]


def rewards_from_logits(logits: torch.Tensor, kind: str = "scratchgan") -> torch.Tensor:
    """Turn discriminator logits into rewards. logits: (B, T) -> (B, T).

    - ``scratchgan``: 2·sigmoid(logit) − 1, in (−1, 1) (ScratchGAN, d'Autume et al. 2019)
    - ``log_d``: log D = log sigmoid(logit), in (−inf, 0)
    - ``logit``: the raw logit, log D − log(1 − D)
    """
    if kind == "scratchgan":
        return 2.0 * torch.sigmoid(logits) - 1.0
    if kind == "log_d":
        return F.logsigmoid(logits)
    if kind == "logit":
        return logits
    raise ValueError(f"unknown reward {kind!r}; choose one of {', '.join(REWARD_KINDS)}")


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """R_t = Σ_{s ≥ t} discount^(s−t) · r_s over the unmasked positions. (B, T) -> (B, T).
    ``discount`` in [0, 1] (a ValueError outside it, nan included)."""
    if not 0 <= discount <= 1:
        raise ValueError(f"discount must be in [0, 1], got {discount}")
    _check_bt("discounted_returns", rewards=rewards, mask=mask)
    rewards = rewards * mask.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + discount * running
        returns[:, t] = running
    return returns * mask.to(rewards.dtype)


def _masked_sums(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None,
                 dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``x`` over the True entries of ``mask`` along ``dim`` (all of them where None), and their
    count, each passed through ``reduce`` together: scalars, or (T,) per position with ``dim=0``."""
    m = mask.to(x.dtype)
    total, count = (x * m).sum(dim), m.sum(dim)
    if reduce is not None:
        total, count = reduce(torch.stack([total, count]).detach())
    return total, count


def batch_mean_baseline(returns: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Per-position mean of the returns over the rows still running there. (B, T) -> (B, T)."""
    _check_bt("batch_mean_baseline", returns=returns, mask=mask)
    total, count = _masked_sums(returns, mask, reduce, dim=0)
    mean = total / count.clamp_min(1.0)  # (T,)
    return mean.expand_as(returns)


def center_rewards(rewards: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Each position's reward less that position's mean over the rows still running there;
    0 at padding. (B, T) -> (B, T).

    Discounted returns sum rewards only up to a row's end token. When D's rewards are mostly
    negative, as they are while it wins, a row that stops early escapes the negative rewards of
    the tokens it would have written, and a baseline on the returns does not undo that: REINFORCE
    then learns to write short sentences. Centred per position, future rewards are zero on
    average, and stopping is judged by D's reward at the end token alone.
    """
    return (rewards - batch_mean_baseline(rewards, mask, reduce)) * mask.to(rewards.dtype)


def reward_increments(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each token's reward as the change it makes to D's reward of the prefix: r_t − r_(t−1),
    with r_(−1) = 0; 0 at padding. (B, T) -> (B, T).

    D's reward judges a whole prefix, so once a sentence has gone wrong every later token
    inherits the low score, however good it is. The increments credit each token with only its
    own effect; they telescope, so the undiscounted return of token t is r_last − r_(t−1).
    """
    _check_bt("reward_increments", rewards=rewards, mask=mask)
    previous = F.pad(rewards[:, :-1], (1, 0))
    return (rewards - previous) * mask.to(rewards.dtype)


def leave_one_out_baseline(returns: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Per-position mean over the *other* running rows (unbiased). (B, T) -> (B, T).

    Where a row is alone at a position the baseline is 0.
    """
    _check_bt("leave_one_out_baseline", returns=returns, mask=mask)
    m = mask.to(returns.dtype)
    total, count = _masked_sums(returns, mask, reduce, dim=0)  # (T,)
    others = (count - m).clamp_min(1.0)
    return torch.where(count - m > 0, (total - returns * m) / others, torch.zeros_like(returns))


def ema_update(
    baseline: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    decay: float,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """One step of a per-position exponential moving average of the mean return.

    baseline: (T_max,) ; returns, mask: (B, T) with T <= T_max -> new baseline (T_max,).
    Positions no row reached keep their value. ``reduce`` maps the per-position sums and counts,
    (2, T_max), to the ones to average (under torchrun: their sums over processes).
    """
    _check_bt("ema_update", returns=returns, mask=mask)
    T = returns.shape[1]
    m = mask.to(returns.dtype)
    stats = torch.zeros(2, len(baseline), dtype=returns.dtype, device=returns.device)
    stats[0, :T], stats[1, :T] = (returns * m).sum(0), m.sum(0)
    if reduce is not None:
        stats = reduce(stats)
    total, count = stats
    mean = total / count.clamp_min(1.0)
    return torch.where(count > 0, decay * baseline + (1 - decay) * mean, baseline)


class EMABaseline:
    """Per-position moving average of the returns, with state for checkpoints.

    The first update sets the baseline to the first batch's mean, not a step from 0, at every
    position that batch reached; a position first reached later starts from 0, as in any moving
    average, and takes about 1 / (1 - decay) updates to forget it. Under torchrun each update
    averages the global batch, every process's rows, so every process holds the same baseline and
    rank 0's checkpoint holds the run's.
    """

    def __init__(self, max_length: int, decay: float = 0.9):
        if not 0 <= decay < 1:
            raise ValueError(f"the baseline's decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.value = torch.zeros(max_length)
        self.initialized = False

    def __call__(self, returns: torch.Tensor) -> torch.Tensor:
        """The baseline for ``returns`` (B, T) -> (B, T)."""
        return self.value[: returns.shape[1]].to(returns.device).expand_as(returns)

    @property
    def reduce(self) -> Reduce | None:
        """The ``reduce`` for the batch statistics of the returns this baseline tracks, (k, T) with T up to its
        length: under torchrun their sums over processes (:func:`textgan.distributed.summed`), else None."""
        return distributed.summed(len(self.value))

    def update(self, returns: torch.Tensor, mask: torch.Tensor) -> None:
        decay = self.decay if self.initialized else 0.0
        self.value = ema_update(self.value.to(returns.device), returns.detach(), mask, decay,  # stays on the device
                                reduce=distributed.all_sum)
        self.initialized = True

    def state_dict(self) -> dict:
        return {"value": self.value.tolist(), "initialized": self.initialized, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.value = torch.tensor(state["value"], dtype=torch.float32)
        self.initialized = bool(state["initialized"])
        self.decay = float(state["decay"])


def baseline_values(kind: str, returns: torch.Tensor, mask: torch.Tensor, ema: EMABaseline | None = None,
                    reduce: Reduce | None = None) -> torch.Tensor:
    """The baseline of ``kind`` (one of :data:`BASELINE_KINDS`) for returns (B, T) -> (B, T)."""
    if kind == "ema":
        if ema is None:
            raise ValueError("the ema baseline needs an EMABaseline")
        return ema(returns)
    if kind == "batch_mean":
        return batch_mean_baseline(returns, mask, reduce)
    if kind == "leave_one_out":
        return leave_one_out_baseline(returns, mask, reduce)
    if kind == "none":
        return torch.zeros_like(returns)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINE_KINDS)}")


def advantage_scale(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                    reduce: Reduce | None = None) -> torch.Tensor:
    """Standard deviation over the unmasked entries, plus ``eps``: what :func:`normalize_advantages`
    divides by. (B, T) -> scalar."""
    mean = masked_mean(advantages, mask, reduce)
    return masked_mean((advantages - mean) ** 2, mask, reduce).sqrt() + eps


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                         reduce: Reduce | None = None) -> torch.Tensor:
    """Zero mean, unit variance over the unmasked entries. (B, T) -> (B, T), 0 at padding."""
    _check_bt("normalize_advantages", advantages=advantages, mask=mask)
    mean = masked_mean(advantages, mask, reduce)
    return (advantages - mean) / advantage_scale(advantages, mask, eps, reduce) * mask.to(advantages.dtype)


def reinforce_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> torch.Tensor:
    """Surrogate loss whose gradient is the REINFORCE estimate, averaged over real tokens (of the global batch
    under torchrun: :func:`loss_mean`).

    −mean_t[ logπ(a_t) · A_t ] − entropy_coef · mean_t[ H_t ], over unmasked positions.
    Advantages are treated as constants. All inputs (B, T) -> scalar.
    """
    _check_bt("reinforce_loss", logprobs=logprobs, advantages=advantages, mask=mask, entropy=entropy)
    if entropy is None or not entropy_coef:
        return -loss_mean(logprobs * advantages.detach(), mask)
    policy, mean_entropy = loss_means((logprobs * advantages.detach(), mask), (entropy, mask))
    return -policy - entropy_coef * mean_entropy


def mc_rollout_rewards(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    complete: Callable[[torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor], torch.Tensor],
    num_rollouts: int,
) -> torch.Tensor:
    """SeqGAN's Monte-Carlo rewards: Q_t = mean over K completions of ``tokens[:, : t + 1]``.

    Args:
        tokens: (B, T) sampled sentences (no BOS); mask: (B, T).
        complete: (prefixes (N, t), rows (N,)) -> full sentences (N, T') sampled from the generator,
            where ``prefixes[i] == tokens[rows[i], :t]`` (e.g. :class:`textgan.sampling.PrefixCompleter`,
            which uses ``rows`` to continue from the sampled batch's KV cache). A completer with a
            nonzero ``prefix_batch_rows`` attribute is called as ``complete.every_prefix(rows, lengths)``
            instead, on prefixes of every length together, up to that many rows a call.
        score: sentences (N, T') -> (N,) reward of each whole sentence (e.g. D's probability).
        num_rollouts: K.
    Returns:
        (B, T) rewards, 0 at padding. At each row's last position the reward is the score
        of the sentence itself (no completion is needed).
    """
    if not isinstance(num_rollouts, int) or num_rollouts < 1:  # 0 gave nan rewards: the mean of no completions
        raise ValueError(f"mc_rollout_rewards needs num_rollouts of at least 1, got {num_rollouts!r}")
    _check_bt("mc_rollout_rewards", tokens=tokens, mask=mask)
    B, T = tokens.shape
    rewards = torch.zeros(B, T, device=tokens.device)
    lengths = mask.sum(1)
    batch_rows = getattr(complete, "prefix_batch_rows", 0)
    if batch_rows:  # every prefix length at once (PrefixCompleter.every_prefix), up to batch_rows rows a call
        row, t = (lengths[:, None] > torch.arange(T, device=tokens.device)[None] + 1).nonzero(as_tuple=True)
        step = max(1, batch_rows // num_rollouts)  # (row, t) pairs per call
        for start in range(0, len(row), step):
            r, p = row[start : start + step], t[start : start + step]
            sentences = complete.every_prefix(r.repeat_interleave(num_rollouts), (p + 1).repeat_interleave(num_rollouts))
            rewards[r, p] = score(sentences).view(len(r), num_rollouts).mean(1)
    else:
        for t in range(T):
            running = (lengths > t + 1).nonzero().squeeze(1)  # rows with tokens after position t
            if len(running) == 0:
                continue
            rows = running.repeat_interleave(num_rollouts)  # (N·K,)
            scores = score(complete(tokens[rows, : t + 1], rows)).view(len(running), num_rollouts).mean(1)
            rewards[running, t] = scores
    final = score(tokens)  # (B,)
    last = (lengths - 1).clamp_min(0)
    rewards[torch.arange(B, device=tokens.device), last] = final
    return rewards * mask.to(rewards.dtype)
