import pytest
import torch
from torch.testing import assert_close

from textgan.losses import discriminator_loss, mle_loss
from textgan.models import build_discriminator


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_token_discriminator_scores_prefixes_causally(kind):
    d = build_discriminator(kind, vocab_size=50, pad_id=0, dim=16, dropout=0.0).eval()
    tokens = torch.randint(1, 50, (4, 9))
    logits = d(tokens)
    assert logits.shape == (4, 9)
    changed = tokens.clone()
    changed[:, 5:] = torch.randint(1, 50, (4, 4))
    # position t judges the prefix up to t: later tokens must not change it
    assert_close(d(changed)[:, :5], logits[:, :5])


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_token_discriminator_lm_head_loss(kind):
    torch.manual_seed(0)
    d = build_discriminator(kind, vocab_size=20, pad_id=0, dim=16, dropout=0.0, lm_head=True).eval()
    tokens = torch.randint(1, 20, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False  # row 1 ends after four tokens
    h = d.hidden(tokens)
    assert_close(d.score(h), d(tokens))
    # by hand: state t predicts token t + 1, over the targets the mask keeps
    logp = torch.log_softmax(d.lm_head(h), -1)
    terms = [-logp[b, t, tokens[b, t + 1]] for b in range(3) for t in range(5) if mask[b, t + 1]]
    assert_close(d.lm_loss(h, tokens, mask), torch.stack(terms).mean())
    # the LM head learns: a few steps on one batch lower its loss
    optimizer = torch.optim.Adam(d.parameters(), lr=1e-2)
    first = float(d.lm_loss(d.hidden(tokens), tokens, mask).detach())
    for _ in range(20):
        optimizer.zero_grad()
        d.lm_loss(d.hidden(tokens), tokens, mask).backward()
        optimizer.step()
    assert float(d.lm_loss(d.hidden(tokens), tokens, mask).detach()) < 0.5 * first
    with pytest.raises(ValueError, match="without an LM head"):
        build_discriminator(kind, vocab_size=20, pad_id=0, dim=16).lm_loss(h, tokens, mask)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_token_values_sum_to_the_prefix_logits(kind):
    torch.manual_seed(0)
    d = build_discriminator(kind, vocab_size=30, pad_id=0, dim=16, dropout=0.0, token_values=True).eval()
    with torch.no_grad():
        d.start.normal_()
        d.value_bias.normal_()
    tokens = torch.randint(1, 30, (4, 7))
    values = d.token_values(tokens)
    assert values.shape == (4, 7, 30)
    # a prefix's logit is the sum of its tokens' values
    taken = torch.stack([values[b, t, tokens[b, t]] for b in range(4) for t in range(7)]).view(4, 7)
    assert_close(d(tokens), taken.cumsum(1))
    assert_close(d.score(d.hidden(tokens), tokens), d(tokens))
    with pytest.raises(ValueError, match="with their tokens"):
        d.score(d.hidden(tokens))
    # values at position t read tokens[:, :t] only: changing token t onwards leaves them as they were
    changed = tokens.clone()
    changed[:, 3:] = torch.randint(1, 30, (4, 4))
    assert_close(d.token_values(changed)[:, :4], values[:, :4])
    assert not torch.allclose(d.token_values(changed)[:, 4:], values[:, 4:])
    # the padding row learns too: a generator can write the padding token inside a sentence, and
    # D must be able to value it there (a lookup with padding_idx would leave that row at zero)
    d(torch.tensor([[3, 0, 5]])).sum().backward()
    assert d.embedding.weight.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="without token values"):
        build_discriminator(kind, vocab_size=30, pad_id=0, dim=16).token_values(tokens)
    with pytest.raises(ValueError, match="no auxiliary LM head"):
        build_discriminator(kind, vocab_size=30, pad_id=0, dim=16, lm_head=True, token_values=True)


def test_token_values_gradients_repeat_exactly():
    """Training runs repeat bit for bit on one machine: D's gradients, at the recipe's sizes, are the
    same each time (indexing the embedding rows, whose CPU backward adds in a thread-dependent order,
    failed this)."""
    torch.manual_seed(0)
    d = build_discriminator("lstm", vocab_size=430, pad_id=0, dim=128, dropout=0.0, token_values=True)
    tokens = torch.randint(0, 430, (256, 21))
    grads = []
    for _ in range(4):
        d.zero_grad()
        d(tokens).sum().backward()
        grads.append([p.grad.clone() for p in d.parameters()])
    assert all(torch.equal(a, b) for other in grads[1:] for a, b in zip(grads[0], other))


def test_cnn_discriminator_shapes_and_short_input():
    d = build_discriminator("cnn", vocab_size=50, pad_id=0, dim=16).eval()
    assert d(torch.randint(1, 50, (3, 12))).shape == (3,)
    assert d(torch.randint(1, 50, (3, 2))).shape == (3,)  # shorter than the widest filter


@pytest.mark.parametrize("kind", ["lstm", "transformer", "cnn"])
def test_spectral_norm_bounds_linear_layers(kind):
    d = build_discriminator(kind, vocab_size=50, pad_id=0, dim=16, spectral_norm=True).train()
    for _ in range(30):  # power iteration converges as the module runs in training mode
        d(torch.randint(1, 50, (2, 6)))
    heads = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert heads
    for layer in heads:
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2) <= 1.05


def test_unknown_discriminator():
    with pytest.raises(ValueError, match="unknown discriminator"):
        build_discriminator("gru", 10, 0)


def test_discriminator_objectives_hand_computed():
    real = torch.tensor([2.0, 0.0])
    fake = torch.tensor([-1.0, 3.0])
    softplus = torch.nn.functional.softplus
    bce = (softplus(-real).mean() + softplus(fake).mean())
    assert_close(discriminator_loss(real, fake, objective="bce"), bce)
    # hinge: relu(1-2)=0, relu(1-0)=1 -> 0.5; relu(1-1)=0, relu(1+3)=4 -> 2
    assert_close(discriminator_loss(real, fake, objective="hinge"), torch.tensor(2.5))
    # lsgan: 0.5*((2-1)^2 + (0-1)^2)/2 = 0.5; 0.5*(1 + 9)/2 = 2.5
    assert_close(discriminator_loss(real, fake, objective="lsgan"), torch.tensor(3.0))
    with pytest.raises(ValueError):
        discriminator_loss(real, fake, objective="wasserstein")
    with pytest.raises(TypeError):  # the objective is named: a third positional argument is the real mask
        discriminator_loss(real, fake, None, None, "hinge")


def test_discriminator_loss_respects_masks():
    real = torch.tensor([[1.0, 100.0]])
    fake = torch.tensor([[-1.0, -100.0]])
    mask = torch.tensor([[True, False]])
    loss = discriminator_loss(real, fake, mask, mask, objective="hinge")
    assert_close(loss, torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"fake_mask \(2,\) must have the shape of fake_logits \(1, 2\)"):
        discriminator_loss(real, fake, mask, mask[0])  # a (T,) mask would broadcast over the rows


def test_mle_loss_masks_padding():
    logprobs = torch.tensor([[-1.0, -3.0, -50.0]])
    mask = torch.tensor([[True, True, False]])
    assert_close(mle_loss(logprobs, mask), torch.tensor(2.0))
