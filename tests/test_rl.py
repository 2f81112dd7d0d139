import pytest
import torch
from torch.testing import assert_close

from textgan import rl
from textgan.rl import (
    EMABaseline,
    baseline_values,
    batch_mean_baseline,
    center_rewards,
    discounted_returns,
    ema_update,
    leave_one_out_baseline,
    loss_means,
    masked_mean,
    mc_rollout_rewards,
    normalize_advantages,
    reinforce_loss,
    reward_increments,
    rewards_from_logits,
)

MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_rewards_from_logits():
    logits = torch.tensor([[0.0, 2.0]])
    s = 1 / (1 + torch.exp(torch.tensor(-2.0)))
    assert_close(rewards_from_logits(logits, "scratchgan"), torch.tensor([[0.0, float(2 * s - 1)]]))
    assert_close(rewards_from_logits(logits, "log_d"), torch.tensor([[float(torch.log(torch.tensor(0.5))), float(torch.log(s))]]))
    assert_close(rewards_from_logits(logits, "logit"), logits)
    with pytest.raises(ValueError):
        rewards_from_logits(logits, "wgan")


def test_discounted_returns_hand_computed():
    rewards = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 9.0]])
    returns = discounted_returns(rewards, MASK, discount=0.5)
    # row 0: R2 = 4, R1 = 2 + 0.5*4 = 4, R0 = 1 + 0.5*4 = 3; row 1: padding reward 9 is ignored
    assert_close(returns, torch.tensor([[3.0, 4.0, 4.0], [1.5, 1.0, 0.0]]))
    assert_close(discounted_returns(rewards, MASK, 0.0), rewards * MASK)
    scratch = discounted_returns(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), 0.23)
    assert_close(scratch, torch.tensor([[1 + 0.23 + 0.23**2, 1.23, 1.0]]))
    assert_close(discounted_returns(rewards, MASK, 1), (rewards * MASK).flip(1).cumsum(1).flip(1) * MASK)


@pytest.mark.parametrize("discount", [-0.5, 1.5, float("nan")])
def test_a_discount_outside_0_1_is_refused(discount):
    """Outside [0, 1] the returns were computed all the same (discount -1 alternates signs, 1.5 grows
    without bound): a ValueError names the setting, as the recipes' config checks do."""
    with pytest.raises(ValueError, match="discount must be in \\[0, 1\\]"):
        discounted_returns(torch.ones(2, 3), MASK, discount)


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_an_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\)"):
        EMABaseline(4, decay=decay)


def test_batch_mean_and_leave_one_out_baselines():
    returns = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 100.0], [5.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    mean = batch_mean_baseline(returns, mask)
    assert_close(mean[0], torch.tensor([3.0, 3.0, 4.0]))
    loo = leave_one_out_baseline(returns, mask)
    # row 0 position 0: mean of 3 and 5 = 4; position 2: only row 2 is left -> 5
    assert_close(loo[0], torch.tensor([4.0, 3.5, 5.0]))
    assert_close(loo[1, :2], torch.tensor([3.0, 1.5]))
    single = leave_one_out_baseline(torch.tensor([[7.0]]), torch.tensor([[True]]))
    assert_close(single, torch.tensor([[0.0]]))


def test_center_rewards_hand_computed():
    rewards = torch.tensor([[-1.0, -0.5, -0.2], [-0.6, -0.1, 9.0]])
    centred = center_rewards(rewards, MASK)
    # position 0: mean -0.8; position 1: mean -0.3; position 2: only row 0 runs (mean -0.2); padding -> 0
    assert_close(centred, torch.tensor([[-0.2, -0.2, 0.0], [0.2, 0.2, 0.0]]))
    # centred, a continuation's discounted future is zero on average at every position
    returns = discounted_returns(centred, MASK, 0.5)
    assert_close(masked_mean(returns - centred, MASK), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_reward_increments_hand_computed():
    rewards = torch.tensor([[-1.0, -0.5, -0.2], [-0.6, -0.1, 9.0]])
    increments = reward_increments(rewards, MASK)
    # row 0: -1, -0.5 - (-1), -0.2 - (-0.5); row 1 ends after two tokens: its padding is 0
    assert_close(increments, torch.tensor([[-1.0, 0.5, 0.3], [-0.6, 0.5, 0.0]]))
    # undiscounted, they telescope: token t's return is the last reward less the reward before t
    returns = discounted_returns(increments, MASK, 1.0)
    assert_close(returns, torch.tensor([[-0.2, 0.8, 0.3], [-0.1, 0.5, 0.0]]))


def test_ema_baseline_update_and_state():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0])
    returns = torch.tensor([[3.0, 5.0, 7.0], [1.0, 1.0, 0.0]])
    new = ema_update(base, returns, MASK, decay=0.75)
    # position 0: mean 2 -> 0.75 + 0.5; position 2: only row 0 (7) -> 0.75 + 1.75; position 3 untouched
    assert_close(new, torch.tensor([1.25, 1.5, 2.5, 1.0]))
    ema = EMABaseline(4, decay=0.75)
    ema.update(returns, MASK)  # the first update takes the batch mean
    assert_close(ema.value, torch.tensor([2.0, 3.0, 7.0, 0.0]))
    ema.update(returns, MASK)
    assert_close(ema.value, torch.tensor([2.0, 3.0, 7.0, 0.0]))
    restored = EMABaseline(4)
    restored.load_state_dict(ema.state_dict())
    assert_close(restored(returns), ema(returns))
    assert restored.decay == 0.75 and restored.initialized
    # position 3, first reached by the third batch, steps from 0 like any moving average: 0.25 * 4
    longer = torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    ema.update(longer, torch.ones_like(longer, dtype=torch.bool))
    assert_close(ema.value, torch.tensor([2.5, 3.25, 6.25, 1.0]))


def test_baseline_values_dispatch():
    returns = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 0.0]])
    assert_close(baseline_values("none", returns, MASK), torch.zeros_like(returns))
    assert_close(baseline_values("batch_mean", returns, MASK), batch_mean_baseline(returns, MASK))
    with pytest.raises(ValueError):
        baseline_values("median", returns, MASK)


def test_normalize_advantages_and_masked_mean():
    adv = torch.tensor([[1.0, 3.0, 5.0], [7.0, 9.0, 1000.0]])
    out = normalize_advantages(adv, MASK)
    assert_close(masked_mean(out, MASK), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(masked_mean(out**2, MASK), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert out[1, 2] == 0
    assert_close(masked_mean(adv, MASK), torch.tensor(5.0))


def test_loss_means_alone_are_masked_means():
    """One process: each loss mean is masked_mean's number, bitwise (no mask: every entry), 0 where none."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 7), torch.randn(6)
    mask = torch.rand(4, 7) > 0.4
    means = loss_means((x, mask), (y, None), (x, torch.zeros_like(mask)))
    assert torch.equal(means[0], masked_mean(x, mask))
    assert torch.equal(means[1], masked_mean(y, torch.ones_like(y, dtype=torch.bool)))
    assert means[2] == 0


def test_reinforce_loss_hand_computed():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -9.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 0.5, -1.0], [2.0, 0.0, 5.0]])
    loss = reinforce_loss(logprobs, advantages, MASK)
    # -(−1 −1 +3 −2 + 0) / 5
    assert_close(loss, torch.tensor(0.2))
    loss.backward()
    assert_close(logprobs.grad, -advantages * MASK / 5)
    entropy = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 50.0]])
    assert_close(reinforce_loss(logprobs, advantages, MASK, entropy, 0.1), torch.tensor(0.1))


def test_mc_rollout_rewards_with_known_completions():
    tokens = torch.tensor([[5, 6, 2], [7, 2, 0]])  # 2 is the end token, 0 padding
    mask = torch.tensor([[True, True, True], [True, True, False]])
    calls = []

    def complete(prefixes, rows):
        calls.append(prefixes.shape)
        assert torch.equal(prefixes, tokens[rows, : prefixes.shape[1]])  # rows name each prefix's sentence
        # completion appends 1s; rollouts alternate an extra token so the mean matters
        extra = torch.arange(len(prefixes))[:, None] % 2
        return torch.cat([prefixes, extra + 1, torch.full((len(prefixes), 1), 2)], 1)

    def score(sentences):
        return sentences.sum(1).float()

    rewards = mc_rollout_rewards(tokens, mask, complete, score, num_rollouts=2)
    # row 0, t=0: prefix [5] -> [5,1,2] (8) and [5,2,2] (9): mean 8.5; t=1: [5,6] -> 14, 15: 14.5; t=2: itself 13
    # row 1, t=0: [7] -> 10, 11: 10.5; t=1: itself, 9
    assert_close(rewards, torch.tensor([[8.5, 14.5, 13.0], [10.5, 9.0, 0.0]]))
    assert calls[0] == (4, 1)


# --- the estimator, statistically ------------------------------------------------------------
# A two-step policy over 3 tokens: y0 ~ softmax(theta0), y1 ~ softmax(theta1[y0]); dense rewards
# r0 = w0[y0] + 3 and r1 = w1[y0, y1] + 3 (the offset makes baselines matter). With discount 1
# the REINFORCE estimate is unbiased for the gradient of J = E[r0 + r1], which we get exactly
# by enumerating the 9 sequences.

V = 3


def _toy():
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(V, generator=g)
    theta1 = torch.randn(V, V, generator=g)
    w0 = torch.randn(V, generator=g) + 3
    w1 = torch.randn(V, V, generator=g) + 3
    return theta0, theta1, w0, w1


def _exact_gradient(theta0, theta1, w0, w1):
    t0, t1 = theta0.clone().requires_grad_(), theta1.clone().requires_grad_()
    p0 = torch.softmax(t0, 0)
    p1 = torch.softmax(t1, 1)
    J = (p0 * w0).sum() + (p0[:, None] * p1 * w1).sum()
    J.backward()
    return torch.cat([t0.grad, t1.grad.flatten()])


def _estimates(baseline, batches=400, batch=32, seed=0):
    theta0, theta1, w0, w1 = _toy()
    g = torch.Generator().manual_seed(seed)
    ema = EMABaseline(2, decay=0.9)
    out = []
    for _ in range(batches):
        t0, t1 = theta0.clone().requires_grad_(), theta1.clone().requires_grad_()
        y0 = torch.multinomial(torch.softmax(t0, 0).expand(batch, V), 1, generator=g).squeeze(1)
        y1 = torch.multinomial(torch.softmax(t1[y0], 1), 1, generator=g).squeeze(1)
        logprobs = torch.stack([torch.log_softmax(t0, 0)[y0], torch.log_softmax(t1[y0], 1).gather(1, y1[:, None]).squeeze(1)], 1)
        rewards = torch.stack([w0[y0], w1[y0, y1]], 1)
        mask = torch.ones(batch, 2, dtype=torch.bool)
        returns = discounted_returns(rewards, mask, 1.0)
        advantages = returns - baseline_values(baseline, returns, mask, ema)
        ema.update(returns, mask)
        loss = reinforce_loss(logprobs, advantages, mask) * 2  # masked mean over 2 positions -> sum over t
        loss.backward()
        out.append(-torch.cat([t0.grad, t1.grad.flatten()]))
    return torch.stack(out), _exact_gradient(theta0, theta1, w0, w1)


@pytest.mark.parametrize("baseline", ["none", "ema", "leave_one_out"])
def test_reinforce_is_unbiased(baseline):
    estimates, exact = _estimates(baseline)
    mean = estimates.mean(0)
    stderr = estimates.std(0) / estimates.shape[0] ** 0.5
    # every coordinate within 4 standard errors (plus a little slack for the EMA's warm-up batch)
    assert ((mean - exact).abs() <= 4 * stderr + 0.01).all(), (mean, exact, stderr)


def test_baselines_reduce_variance():
    variance = {b: _estimates(b)[0].var(0).sum().item() for b in ("none", "ema", "batch_mean", "leave_one_out")}
    for b in ("ema", "batch_mean", "leave_one_out"):
        assert variance[b] < 0.5 * variance["none"], variance


@pytest.mark.parametrize("call", [
    lambda r, m: rl.discounted_returns(r, m[:, :-1], 0.9),  # a mask cut one position short: torch's message
    lambda r, m: rl.discounted_returns(r[:, :1], m, 0.9),  # (B, 1) returns broadcast over every position
    lambda r, m: rl.batch_mean_baseline(r, m[0]),  # a (T,) mask broadcast over every row
    lambda r, m: rl.leave_one_out_baseline(r, m[:1]),
    lambda r, m: rl.center_rewards(r, m.T),
    lambda r, m: rl.reward_increments(r[0], m[0]),  # one row, not a batch
    lambda r, m: rl.normalize_advantages(r[:, :1], m),
    lambda r, m: rl.reinforce_loss(r, r[:, :1], m),  # a sentence-level advantage (B, 1)
    lambda r, m: rl.reinforce_loss(r, r, m, entropy=r[:, :-1], entropy_coef=0.1),
    lambda r, m: rl.ema_update(torch.zeros(8), r, m[:, :1], 0.9),
    lambda r, m: rl.mc_rollout_rewards(r.long(), m[:, :-1], None, None, 2),
])
def test_reward_maths_refuses_tensors_that_would_broadcast(call):
    """Every (B, T) function of the reward maths takes only tensors of one (B, T) shape: a (B, 1), (T,) or (1, T)
    tensor used to broadcast silently (the per-position baseline of one row applied to all, a sentence's advantage
    to every token), training on a wrong gradient."""
    rewards, mask = torch.randn(4, 6), torch.ones(4, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"needs \(B, T\) tensors of one shape, got "):
        call(rewards, mask)


@pytest.mark.parametrize("k", [0, -1, 2.0])
def test_mc_rollout_rewards_needs_at_least_one_rollout(k):
    """K=0 gave nan rewards (the mean of no completions) and K=-1 torch's 'Repeats must be non-negative'."""
    tokens, mask = torch.randint(4, 10, (3, 5)), torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs num_rollouts of at least 1"):
        rl.mc_rollout_rewards(tokens, mask, lambda prefixes, rows: tokens[rows], lambda s: torch.zeros(len(s)), k)
