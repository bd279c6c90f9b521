"""``python -m benchmarks.graph_view_bench --quick``: builds the pages, opens them in headless
Chromium and prints a row of figures per case (about 30 s)."""

import importlib.util
import json
import os
import re

import pytest
from helpers import run_benchmark

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None or not os.path.exists(CHROMIUM),
    reason=f"needs playwright and a Chromium at {CHROMIUM}",
)
def test_quick_graph_view_bench(tmp_path):
    report = tmp_path / "figures.json"
    done = run_benchmark(
        "graph_view_bench",
        "--quick",
        "--nodes",
        "2000",
        "--repeats",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--json",
        str(report),
        timeout=300,
    )
    rows = re.findall(r"^\| (gpt [\d.]+M params|2k nested|2k flat) \|", done.stdout, re.MULTILINE)
    assert rows == ["gpt 0.2M params", "2k nested", "2k flat"], done.stdout

    cases = {c["name"]: c for c in json.loads(report.read_text())["cases"]}
    for c in cases.values():
        assert "error" not in c, c["error"]
        assert c["open_s"] > 0 and c["search_s"] > 0 and c["reveal_s"] > 0
        assert c["reveal_after_expand_s"] > 0 and c["search_hits"] > 0
        assert set(c["timings"]) >= {"parse_ms", "layout_ms", "render_ms", "total_ms"}
    assert cases["2k nested"]["nodes"] == 2000 and "expand_s" in cases["2k nested"]
    assert cases["gpt 0.2M params"]["parameters"] == 168_192
    assert cases["gpt 0.2M params"]["torch_export_load_s"] > 0
