"""The README still works: every command it shows parses, and its Python examples run.

Commands are taken from the README's bash blocks and from inline code that shows a command with
arguments; each goes through the same parsing as on the command line (recipe keys, preset files,
flags), without running. The Python blocks run, in order, against a small trained model.
"""

import re
import shlex
from pathlib import Path

import pytest

from textgan.cli import build_parser
from textgan.config import parse_args
from textgan.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        commands += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())  # inline code may wrap across lines
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
