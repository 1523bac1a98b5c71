"""scripts/gpu_check.sh (issue 15 item 6) where no GPU is lent: its syntax, its options, and that it
refuses cleanly (exit 2, one line naming the reason, nothing written) when JAX sees no GPU."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=ROOT, check=False)


def test_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    run = _run("--help")
    assert run.returncode == 0 and "reproduce_figures.py --quick" in run.stdout and "set -e" not in run.stdout


@pytest.mark.parametrize("args, says", [(["--bogus"], "unknown option"), (["--only"], "--only needs"),
                                        (["--total", "0"], "positive whole number"),
                                        (["--bench-budget", "x"], "positive whole number"),
                                        (["--python", "/nonexistent/python"], "no Python")])
def test_bad_usage_is_one_line_and_exit_2(args, says):
    run = _run(*args)
    assert run.returncode == 2 and says in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_refuses_without_a_gpu(tmp_path):
    # JAX_PLATFORMS=cpu: JAX sees no GPU here, and on a GPU machine too (deterministic)
    out = tmp_path / "results"
    run = _run("--python", sys.executable, "--out", str(out), "--no-figures", JAX_PLATFORMS="cpu")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "JAX sees no GPU (cpu:" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "== device" in run.stdout and "jax: cpu:" in run.stdout
    assert not out.exists() and "bench.py" not in run.stdout  # refused before any benchmark
