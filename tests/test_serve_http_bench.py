"""``python -m benchmarks.serve_bench --http --quick``, pt2interp's servers alone: it starts them,
checks their answers, loads them with wrk and prints a table with figures (about 30 s)."""

import json
import re
import shutil

import pytest
from helpers import run_benchmark

pytestmark = pytest.mark.usefixtures("handoff")  # each test under both hand-offs


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_quick_http_bench_pt2interp_alone(tmp_path):
    report = tmp_path / "figures.json"
    done = run_benchmark(
        "serve_bench", "--http", "--quick", "--no-kserve", "--json", str(report), timeout=150
    )

    # one table row per server, each with a positive rate and CPU figure at c=1 and c=64
    line = re.compile(r"^\| (pt2interp bs=\d+) \| 1 \| (.*) \|$", re.MULTILINE)
    rows = {m.group(1): m.group(2) for m in line.finditer(done.stdout)}
    assert set(rows) == {"pt2interp bs=1", "pt2interp bs=16"}, done.stdout
    for cells in rows.values():
        rps1, rps64, cpu1, cpu64, _client, non200 = (c.strip() for c in cells.split("|"))
        assert float(rps1.replace(",", "")) > 0 and float(rps64.replace(",", "")) > 0
        assert float(cpu1) > 0 and float(cpu64) > 0
        assert non200 == "0"
    assert "pt2interp bs=16 vs bs=1, 1 row(s): req/s c=1 " in done.stdout
    assert "kserve" not in rows

    figures = json.loads(report.read_text())
    cells = figures["modes"]["quiet"]["cells"]
    assert {(c["server"], c["concurrency"]) for c in cells} == {
        (s, c) for s in ("pt2interp bs=1", "pt2interp bs=16") for c in (1, 64)
    }
    assert all(c["median"]["requests"] > 0 and c["median"]["non200"] == 0 for c in cells)
