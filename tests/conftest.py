import contextlib
import io
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("TEXTGAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


# A recipe run small enough for a test: a 200-sentence grammar corpus and a one-layer, 32-wide generator.
TINY_RUN = {"grammar_sentences": 200, "d_model": 32, "n_layers": 1, "n_heads": 2, "batch_size": 8, "eval_samples": 16,
            "eval_every": 2, "log_every": 1, "checkpoint_every": 2, "print_samples": 1}


def run_module(module: str, *args: str, stdin: bytes = b"", cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` run in this process: its exit code, standard output and error (str).

    ``MODULE`` is ``textgan`` (the console script's ``main``) or ``textgan.recipes.NAME`` (what that
    module's ``__main__`` block runs). The code path is the command's own, without paying a fresh
    interpreter and a torch import per call; any exception escapes and fails the test, as a
    traceback would. The global RNG state is restored afterwards. A few tests still start a real
    interpreter (``test_console_script_errors_have_no_traceback``, ``test_sample_writes_n_lines``).
    """
    from textgan.cli import main

    def call() -> int:
        if module == "textgan":
            return main(list(args))
        prefix = "textgan.recipes."
        assert module.startswith(prefix), module
        from textgan.recipes import load_recipe
        from textgan.recipes._cli import run_recipe

        recipe, config_cls = load_recipe(module.removeprefix(prefix))
        return run_recipe(config_cls, recipe.main, f"python -m {module}", list(args))

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    stdin_stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    saved_stdin, saved_random = sys.stdin, random.getstate()
    try:
        sys.stdin = stdin_stream
        if cwd is not None:
            os.chdir(cwd)
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            # warnings reach standard error as in a fresh interpreter (pytest would otherwise collect them)
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            try:
                code = call()
            except SystemExit as e:  # argparse's own exit (--help, a bad flag)
                code = 0 if e.code is None else e.code
                if not isinstance(code, int):  # sys.exit("message"): the interpreter prints it and exits 1
                    print(code, file=sys.stderr)
                    code = 1
    finally:
        sys.stdin = saved_stdin
        os.chdir(here)
        random.setstate(saved_random)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def assert_drawn_from(log_p: torch.Tensor, log_q: torch.Tensor, drawn: torch.Tensor) -> None:
    """Tokens ``drawn`` (N,) come from log-probabilities ``log_p`` (V,), not ``log_q`` (V,).

    Their mean log-ratio log p - log q estimates KL(p || q) when they come from p (and -KL(q || p)
    when from q): it must lie within 5 standard errors of KL(p || q), which must itself lie over 20
    standard errors from 0 for the check to tell the two apart.
    """
    ratio = log_p - log_q
    kl = (log_p.exp() * ratio).sum()
    error = ((log_p.exp() * (ratio - kl) ** 2).sum() / len(drawn)).sqrt()
    assert kl > 20 * error
    assert (ratio[drawn].mean() - kl).abs() < 5 * error, (ratio[drawn].mean(), kl, error)


def shared_data(*parts: str) -> Path:
    """Path into ../shared/data; skips the test with a reason where the data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared benchmark data sits beside the repository in CI (set TEXTGAN_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sentences():
    from textgan.grammar import Grammar

    return Grammar.default().sample_corpus(300, seed=0)


@pytest.fixture(scope="session")
def word_tokenizer(sentences):
    from textgan.tokenization import build_word_tokenizer

    return build_word_tokenizer(sentences)


@pytest.fixture()
def tiny_generator(word_tokenizer):
    from textgan.models import build_generator
    from textgan.tokenization import special_ids

    bos, eos, pad = special_ids(word_tokenizer)
    return build_generator(len(word_tokenizer), bos_id=bos, eos_id=eos, pad_id=pad, d_model=32, n_layers=2,
                           n_heads=2, max_positions=24).eval()


@pytest.fixture()
def decoder_dtypes(monkeypatch):
    """The projections' dtype (``LlamaDecoder.low``: None for fp32) of every fast decoder built while
    the test runs, in order."""
    from textgan.models import fast_decode

    made = []

    class Recording(fast_decode.LlamaDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.low)

    monkeypatch.setattr(fast_decode, "LlamaDecoder", Recording)
    return made


@pytest.fixture(params=["default", "onednn"])
def cpu_matmul(request, monkeypatch):
    """Runs the test with textgan's fp32 CPU products through torch's default BLAS and through oneDNN
    (:mod:`textgan.models.onednn`), whichever this machine would pick by itself. Through oneDNN, the
    decoder's products are all oneDNN's, however small the test's model (``onednn.SMALL_PRODUCT_FLOPS``)."""
    from textgan.models import onednn

    if request.param == "onednn" and onednn._operator() is None:
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(onednn, "SMALL_PRODUCT_FLOPS", 0)
    with onednn.use(request.param == "onednn"):
        yield request.param


@pytest.fixture(scope="session")
def trained_generator(tmp_path_factory):
    """The exported generator folder of a two-step MLE run on the grammar corpus."""
    from textgan.recipes import mle

    out = tmp_path_factory.mktemp("trained") / "run"
    mle.main(mle.MLEConfig(out_dir=str(out), grammar_sentences=200, d_model=32, n_layers=1, n_heads=2, steps=2,
                           batch_size=8, eval_samples=8, eval_every=100, checkpoint_every=100))
    return out / "generator"


POSITIVE = ["good", "great", "tasty", "friendly", "lovely"]
NEGATIVE = ["bad", "awful", "bland", "rude", "terrible"]
THINGS = ["the food", "the staff", "our waiter", "the pizza", "the place", "my burger", "the service"]


def _sentences(words, n, seed):
    rng = random.Random(seed)
    return [f"{rng.choice(THINGS)} was {rng.choice(['really ', 'very ', ''])}{rng.choice(words)} ." for _ in range(n)]


@pytest.fixture(scope="session")
def style_folder(tmp_path_factory):
    """A two-style corpus (sentiment words swapped), with test files and human-style references."""
    folder = tmp_path_factory.mktemp("styles")
    for style, words, other in (("neg", NEGATIVE, POSITIVE), ("pos", POSITIVE, NEGATIVE)):
        (folder / f"train.{style}").write_text("\n".join(_sentences(words, 300, len(style))) + "\n")
        (folder / f"dev.{style}").write_text("\n".join(_sentences(words, 20, 7)) + "\n")
        test = _sentences(words, 12, 9)
        (folder / f"test.{style}").write_text("\n".join(test) + "\n")
        swap = dict(zip(words, other))
        (folder / f"reference.{style}").write_text("\n".join(" ".join(swap.get(w, w) for w in t.split()) for t in test) + "\n")
    return folder


@pytest.fixture(scope="session")
def transfer_run(style_folder, tmp_path_factory):
    """A tiny style-transfer run: its folder (model exported to run/model)."""
    from textgan.recipes import style_transfer

    out = tmp_path_factory.mktemp("transfer") / "run"
    style_transfer.main(style_transfer.StyleTransferConfig(
        data=str(style_folder), out_dir=str(out), d_model=32, n_layers=1, n_heads=2, steps=100, warmup_steps=80,
        lr=3e-3, batch_size=16, eval_every=50, eval_sentences=8, checkpoint_every=50, log_every=5, disc_dim=16))
    return out
