"""The serving soak (``python -m benchmarks.serve_soak``), shortened to 40 s with a worker crash
every 15 s: the real server in a subprocess under mixed valid, invalid and abandoned traffic
must answer every request properly, restart its workers, keep its RSS flat and exit cleanly.
Slow (about a minute, both CPUs busy): ``pytest -m slow tests/test_serve_soak.py``.
"""

from __future__ import annotations

import json

import pytest
from helpers import run_benchmark

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

pytestmark = pytest.mark.usefixtures("handoff")  # each test under both hand-offs


@pytest.mark.slow
def test_soak_40_seconds_with_crashes_passes(tmp_path):
    figures = tmp_path / "soak.json"
    # The soak bounds itself (40 s of traffic, 30 s per request, 20 s to stop the server);
    # this timeout only catches a soak that hangs.
    proc = run_benchmark(
        "serve_soak",
        "--seconds",
        "40",
        "--crash-every",
        "15",
        "--json",
        str(figures),
        timeout=300,
        PYTHONUNBUFFERED="1",
    )
    out = proc.stdout + proc.stderr
    assert "pt2interp serve soak" in proc.stdout and "answered 200 and correct" in proc.stdout, out
    assert "PASS" in proc.stdout, out
    result = json.loads(figures.read_text())
    assert result["verdict"] == "PASS" and result["injected"] == 2
    assert result["restarts_status"] == result["restarts_metrics"] == 2
    assert result["counts"]["correct"] > 0 and result["counts"]["refused 4xx"] > 0
