"""Smoke runs of the benchmark scripts' --quick modes, so that the published tables stay reproducible.

Each script runs as a user runs it, from a scratch working folder; a quick run must finish, print its
table, and leave benchmarks/results/ (the recorded full runs) untouched.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _results_digest() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((BENCHMARKS / "results").iterdir())}


@pytest.mark.parametrize(("script", "data", "expected"), [
    ("metric_speed.py", "coco", "| self-bleu |"),
    ("oracle.py", "oracle", "| scratchgan |"),
    ("oracle_overfit.py", "oracle", "| the oracle |"),
    ("oracle_copying.py", "oracle", "| 0.85 |"),
    ("grammar_recipes.py", None, "| seqgan |"),
])
def test_quick_mode_runs_and_leaves_the_recorded_results_alone(script, data, expected, tmp_path):
    if data:
        shared_data(data)  # skips where ../shared/data is absent
    before = _results_digest()
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], check=False, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
    assert _results_digest() == before
