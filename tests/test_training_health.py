"""Non-finite losses and gradients are skipped and counted; too many in a row stop the run."""

from types import SimpleNamespace

import pytest
import torch

from textgan import training
from textgan.training import NonFiniteError, optimizer_step


@pytest.fixture(autouse=True)
def fresh_guard(monkeypatch):
    monkeypatch.setattr(training, "nonfinite", training._NonFiniteGuard())


def _setup():
    model = torch.nn.Linear(3, 1)
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


def test_nan_loss_skips_the_step():
    model, opt = _setup()
    before = [p.clone() for p in model.parameters()]
    loss = model(torch.ones(1, 3)).sum() * float("nan")
    assert optimizer_step(loss, opt, model, clip=1.0) != optimizer_step(loss, opt, model, clip=1.0)  # NaN
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state  # Adam never stepped
    assert training.nonfinite.total == 2


def test_infinite_gradient_skips_the_step_and_a_good_step_resets_the_streak():
    model, opt = _setup()
    before = [p.clone() for p in model.parameters()]
    hook = model.weight.register_hook(lambda grad: grad * float("inf"))  # a finite loss with an infinite gradient
    optimizer_step(model(torch.ones(1, 3)).sum(), opt, model, clip=1.0)
    hook.remove()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert training.nonfinite.in_a_row == 1
    optimizer_step(model(torch.ones(1, 3)).sum(), opt, model, clip=1.0)
    assert training.nonfinite.in_a_row == 0 and training.nonfinite.total == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_too_many_in_a_row_stop_with_a_clear_message():
    model, opt = _setup()
    bad = torch.tensor(float("inf"), requires_grad=True)
    with pytest.raises(NonFiniteError, match="in a row.*resume=true"):
        for _ in range(training.nonfinite.limit):
            optimizer_step(bad * 1.0, opt, model, clip=1.0)


def test_mode_collapse_warning():
    from textgan.training import collapse_warning

    healthy = {"eval/unique": 0.99, "eval/distinct_4": 0.80}
    assert collapse_warning(None, healthy) is None
    assert collapse_warning(healthy, {"eval/unique": 0.95, "eval/distinct_4": 0.75}) is None
    warning = collapse_warning(healthy, {"eval/unique": 0.40, "eval/distinct_4": 0.78})
    assert "mode collapse" in warning and "unique 0.990 -> 0.400" in warning


def test_the_count_of_skipped_steps_is_logged_as_a_count(monkeypatch):
    """Under torchrun the logged means are averaged over processes; the count, the same on every process,
    is not (it stays the integer it is)."""
    logged = {}
    run = SimpleNamespace(log=lambda step, values: logged.update(values), writes=False)
    config = SimpleNamespace(log_every=1, eval_every=10**9, checkpoint_every=10**9)
    bar = SimpleNamespace(set_postfix=lambda *args, **kwargs: None)
    monkeypatch.setattr(training.distributed, "averaged", lambda values: {k: v / 2 for k, v in values.items()})
    training.nonfinite.total = 3
    training.periodic(run, None, config, 1, {"train/g_loss": 1.0}, bar, {}, {})
    assert logged == {"train/g_loss": 0.5, "train/nonfinite_skipped": 3}
    assert isinstance(logged["train/nonfinite_skipped"], int)
