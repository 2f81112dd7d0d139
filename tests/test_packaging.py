"""What ``pip install textgan`` gets: the source distribution builds a wheel that holds every module,
the embedded grammar and the presets, and an installed copy finds them from any folder.

The editable install the tests otherwise run on reads ``data/`` and ``recipes/`` from the checkout,
so a file left out of the wheel would pass every other test and fail a user's first command.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hatchling") is None,
                                reason="needs hatchling, textgan's build backend (pip install -e '.[dev]')")


def hatchling_build(target: str, source: Path, out: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", target, "-d", str(out)], cwd=source,
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("*.whl" if target == "wheel" else "*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from the source distribution, as pip builds one where no wheel is published."""
    work = tmp_path_factory.mktemp("dist")
    sdist = hatchling_build("sdist", ROOT, work / "sdist")
    with tarfile.open(sdist) as archive:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.10.12+ and 3.11.4+
        archive.extractall(work / "src", **safe)
    (unpacked,) = (work / "src").iterdir()
    return hatchling_build("wheel", unpacked, work / "wheel")


def test_the_wheel_holds_every_module_the_grammar_and_the_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "textgan").rglob("*.py")}
    assert modules - names == set()
    assert "textgan/data/captions.pcfg" in names
    presets = {f"textgan/presets/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    assert presets and presets <= names
    assert not any(name.startswith(("tests/", "benchmarks/", "runs/")) for name in names)
    (license_file,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    assert "Apache License" in zipfile.ZipFile(wheel).read(license_file).decode()


def test_an_installed_wheel_finds_its_grammar_and_presets_from_any_folder(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                           str(target), str(wheel)], check=False, capture_output=True, text=True, timeout=300)
    # An environment made by uv has no pip; a pure-Python wheel installs by unpacking it. (Asked in this process,
    # importlib.util.find_spec("pip") would make setuptools' distutils shim stand aside for the rest of the run,
    # and torch.compile's first C++ build then fails on the standard library's distutils.)
    if done.returncode != 0 and "No module named pip" in done.stderr:
        zipfile.ZipFile(wheel).extractall(target)
    else:
        assert done.returncode == 0, done.stderr
    check = (
        "import textgan, textgan.config as c; from textgan.grammar import Grammar\n"
        f"assert textgan.__file__.startswith({str(target)!r}), textgan.__file__\n"
        "g = Grammar.default(); s = g.sample_corpus(3, seed=0); assert all(g.is_grammatical(x) for x in s)\n"
        "print(c.find_preset('recipes/pure_scratchgan.yaml'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable install of the checkout
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, check=False, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == target / "textgan" / "presets" / "pure_scratchgan.yaml"
