"""The README still works: every command it shows parses, its Python examples run, and its links lead somewhere.

Commands are taken from the bash blocks and inline code of the README and of the full results
(benchmarks/RESULTS.md) that show a command with arguments; each goes through the same parsing as on
the command line (recipe keys, preset files, flags), without running. So do the benchmark commands of
those pages, of benchmarks/README.md and of the benchmarks' own docstrings, through each script's
argument parser. The README's Python blocks run, in order, against a small trained model.
"""

import functools
import re
import shlex
from pathlib import Path

import pytest

from textgan.cli import build_parser
from textgan.config import parse_args
from textgan.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/RESULTS.md", "benchmarks/README.md")  # the pages whose commands and links are checked


def _prose(text: str) -> str:
    """Markdown ``text`` without its fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _code(text: str) -> tuple[list[str], list[str]]:
    """The lines of ``text``'s bash blocks (continued lines joined, blank ones left out) and its inline code
    spans (whitespace collapsed: inline code may wrap across lines)."""
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
             for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return lines, [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _prose(text))]


def _docs_text() -> str:
    """The pages of :data:`DOCS`, one after another."""
    return "\n".join((ROOT / name).read_text(encoding="utf-8") for name in DOCS)


def readme_commands() -> list[str]:
    commands, spans = _code(_docs_text())
    for span in spans:
        words = span.split()
        if span.startswith(("python -m textgan.recipes.", "textgan ")) and ("=" in span or len(words) > 3) \
                and "KEY=VALUE" not in span:  # a command with arguments, not a name ("textgan sample --style") or a template
            commands.append(span)
    parts = []
    for command in commands:
        for part in command.split("&&"):
            part = re.split(r"\s#\s", part)[0].strip()
            part = part.split("|", 1)[1].strip() if part.startswith("echo ") else part
            if part.startswith(("python -m textgan", "textgan ")):
                parts.append(part)
    return parts


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) > 20
    assert "python -m textgan.recipes.scratchgan" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_readme_command_parses(command, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets are named from the repository root
    argv = shlex.split(command)
    if argv[0] == "python":
        recipe, args = argv[2].rsplit(".", 1)[1], argv[3:]
    elif argv[1] == "train":
        recipe, args = argv[2], argv[3:]
    else:
        build_parser().parse_args(argv[1:])  # exits 2 on an unknown or ill-formed flag
        return
    if "--help" not in args:
        parse_args(load_recipe(recipe)[1], args)  # ConfigError on an unknown key, a bad value, a missing preset


def test_readme_python_runs(trained_generator, tmp_path):
    """The README's Python blocks, in order, as one script, against a trained run at runs/scratchgan/generator."""
    import shutil
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    shutil.copytree(trained_generator, tmp_path / "runs" / "scratchgan" / "generator")
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks) + "\nassert len(texts) == 64 and rollout.tokens.shape[0] == 64\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    """The anchors GitHub makes for the headings of the Markdown file at ``path`` (a repeated one gets -1, -2...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(path.read_text(encoding="utf-8")), re.MULTILINE):
        anchor = _github_anchor(heading)
        anchors.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return frozenset(anchors)


@pytest.mark.parametrize("name", DOCS)
def test_links_resolve(name):
    """Every link of the page names a heading (`#anchor`), a file or folder of the repository, or a heading of
    another page (`page.md#anchor`)."""
    page = ROOT / name
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8"))
    assert links
    for link in links:
        if "://" in link:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.is_relative_to(ROOT) and path.exists(), f"{name} links to {link}, which is no file"
        assert not anchor or anchor in _anchors(path), f"{name} links to {link}, which is no heading there"


def test_readme_and_full_results_link_each_other():
    """Each summary in the README's results leads to its full record, and the full record back to the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = readme[readme.index("\n## Results\n"):readme.index("\n## Honest notes\n")]
    full = _anchors(ROOT / "benchmarks" / "RESULTS.md")
    for section in re.split(r"\n### ", results)[1:]:
        anchor = _github_anchor(section.splitlines()[0])
        assert anchor in full, f"the full results have no section for README's {anchor}"
        assert f"benchmarks/RESULTS.md#{anchor}" in section, f"README's {anchor} does not link to its full record"
    assert "../README.md#results" in (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")


def benchmark_commands() -> list[str]:
    """The `python benchmarks/...` commands that the README, the full results, benchmarks/README.md and the
    benchmarks' own docstrings (their ``--help``) show; an optional part written in brackets gives two
    commands, one without it and one with it."""
    import ast

    lines, spans = _code(_docs_text())
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        lines += (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").replace("\\\n", " ").splitlines()
    commands = set()
    for span in spans + [re.split(r"\s#\s", line)[0] for line in lines]:
        for part in span.split("&&"):
            start = part.find("python benchmarks/")
            if start < 0:
                continue
            command = " ".join(part[start:].split())
            commands.add(re.sub(r"\s*\[[^]]*\]", "", command))
            commands.add(re.sub(r"\[([^]]*)\]", r"\1", command))
    return sorted(commands)


BENCHMARK_COMMANDS = benchmark_commands()


class _Parsed(Exception):
    """Raised in place of running a benchmark once its command line has parsed."""


def test_benchmark_commands_are_found():
    assert len(BENCHMARK_COMMANDS) > 30
    assert {"python benchmarks/coco.py --retrain", "python benchmarks/memory.py --pairs 9"} <= set(BENCHMARK_COMMANDS)


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS, ids=[c[18:88] for c in BENCHMARK_COMMANDS])
def test_benchmark_command_parses(command, monkeypatch, capsys):
    """The script exists and its own argument parser accepts the command (flags, choices, value types); the
    benchmark itself is not run."""
    import argparse
    import runpy

    argv = shlex.split(command)[1:]
    script = ROOT / argv[0]
    assert script.is_file(), f"{argv[0]} does not exist"
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)  # exits 2 on an unknown flag or a bad value
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr("sys.argv", [str(script), *argv[1:]])
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.chdir(ROOT)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{command}: exit {exit_.code}: {capsys.readouterr().err.strip()[-300:]}")
    except _Parsed:
        return
    pytest.fail(f"{command} ran without parsing its arguments")


def test_the_benchmark_index_lists_every_script():
    """benchmarks/README.md has a row for every benchmark script, and no row for a script that is gone."""
    index = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([a-z_0-9]+\.py)` \|", index, re.MULTILINE))
    scripts = {path.name for path in (ROOT / "benchmarks").glob("[a-z]*.py")}
    assert rows == scripts
