"""No code path loads pickles or runs code from a model folder unless the user asks."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "textgan").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def problems(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] in UNSAFE_MODULES for n in names):
                found.append(f"{where}: imports a pickle-like module")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if owner == "torch" and node.func.attr == "load" and not _is_const(_keyword(node, "weights_only"), True):
                found.append(f"{where}: torch.load without weights_only=True")
            if owner in ("np", "numpy") and node.func.attr == "load" and not _is_const(_keyword(node, "allow_pickle"), False):
                found.append(f"{where}: np.load without allow_pickle=False")
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and _is_const(node.value, True):
            found.append(f"{where}: trust_remote_code=True hard-coded")
    return found


def test_sources_are_found():
    assert len(SOURCES) > 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_no_unsafe_loading(path):
    assert problems(path) == []


def test_the_scanner_catches_what_it_should(tmp_path):
    bad = ROOT / "tests" / "_scanner_probe.py"
    try:
        bad.write_text("import pickle\nimport torch\nimport numpy as np\ntorch.load('x')\nnp.load('y')\n"
                       "f(trust_remote_code=True)\ntorch.load('z', weights_only=True)\n")
        assert len(problems(bad)) == 4
    finally:
        bad.unlink()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("recipe", ["scratchgan", "style_transfer"])
def test_recipes_write_only_inside_the_run_folder(recipe, tmp_path, monkeypatch, style_folder):
    """Every file a recipe writes lies under out_dir, whatever the other paths in its config say.

    The config's input paths go through `..` and sit beside the run folder; the working
    directory is the parent of both. Afterwards nothing new exists outside out_dir.
    """
    from textgan.recipes import scratchgan, style_transfer

    work = tmp_path / "work"
    (work / "inputs").mkdir(parents=True)
    monkeypatch.chdir(work)
    if recipe == "scratchgan":
        corpus = work / "inputs" / "corpus.txt"
        corpus.write_text("\n".join(["a man rides a bike .", "a dog runs on the beach ."] * 20) + "\n")
        config = scratchgan.ScratchGANConfig(
            data="runs/../inputs/corpus.txt", out_dir="runs/../runs/x", steps=2, pretrain_steps=1, d_model=16,
            n_layers=1, n_heads=2, disc_dim=8, batch_size=4, eval_every=2, eval_samples=4, checkpoint_every=1,
            log_every=1)
        run = scratchgan.main
    else:
        for f in style_folder.iterdir():
            (work / "inputs" / f.name).write_bytes(f.read_bytes())
        config = style_transfer.StyleTransferConfig(
            data="runs/../inputs", out_dir="runs/../runs/x", d_model=16, n_layers=1, n_heads=2, steps=2,
            warmup_steps=1, batch_size=4, eval_every=2, eval_sentences=4, checkpoint_every=1, log_every=1, disc_dim=8)
        run = style_transfer.main
    before = _files(tmp_path)
    run(config)
    written = _files(tmp_path) - before
    out = (work / "runs" / "x").resolve()
    assert written and all(p.resolve().is_relative_to(out) for p in written), sorted(map(str, written))
