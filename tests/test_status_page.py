"""The live status page in a real browser: headless Chromium loads ``/`` after some traffic, its
JavaScript polls ``/v2/status`` and renders the models, and the figures in the DOM must match
``Server.info()``. Skips (saying why) where Debian's ``chromium`` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import torch
from fixture_cases import case
from helpers import running

pytest.importorskip("fastapi", reason="fastapi is in the serve extras")
pytest.importorskip("uvicorn", reason="uvicorn is in the serve extras")

from pt2interp.serve import Server  # noqa: E402
from pt2interp.serve.http import create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)",
)


class _Figures(HTMLParser):
    """Collects ``data-model``/``data-field`` elements: their ``data-value`` and their text."""

    def __init__(self):
        super().__init__()
        self.values: dict[tuple[str, str], str | None] = {}
        self.texts: dict[tuple[str, str], str] = {}
        self.rows: dict[tuple[str, str], list[list[str]]] = {}
        self.attrs_by_id: dict[str, dict] = {}
        self._open: list[tuple[str, tuple[str, str] | None]] = []
        self._table: tuple[str, str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.attrs_by_id[a["id"]] = a
        key = (
            (a["data-model"], a["data-field"]) if "data-model" in a and "data-field" in a else None
        )
        if key and tag == "table":
            self._table = key
            self.rows[key] = []
        elif key:
            self.values[key] = a.get("data-value")
            self.texts[key] = ""
        if self._table and tag == "tr":
            self.rows[self._table].append([])
        if self._table and tag in ("td", "th"):
            self._cell = []
        if tag not in ("br", "img", "meta", "input"):
            self._open.append((tag, key))

    def handle_endtag(self, tag):
        while self._open:
            open_tag, _key = self._open.pop()
            if open_tag == tag:
                break
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        for _, key in self._open:
            if key in self.texts:
                self.texts[key] += data
        if self._cell is not None:
            self._cell.append(data)


def _dump_dom(url: str, profile_dir) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--virtual-time-budget=4000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_status_page_shows_what_info_says(tmp_path):
    servers = {
        "mlp": Server(
            case("zoo", "dynamic_batch_mlp").path, name="page-mlp", batch_size=8, batch_timeout_ms=2
        ),
        "multi_io": Server(case("zoo", "multi_io").path, name="page-multi-io"),
    }
    try:
        with running(create_app(servers)) as url, httpx.Client(base_url=url, timeout=30) as client:
            for n in range(1, 13):
                x = torch.randn(n % 4 + 1, 16)
                body = {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": list(x.shape),
                            "datatype": "FP32",
                            "data": x.reshape(-1).tolist(),
                        }
                    ]
                }
                assert client.post("/v2/models/mlp/infer", json=body).status_code == 200
            for _ in range(2):
                assert client.post("/v2/models/mlp/infer", json={"inputs": []}).status_code == 400
            (a, b, mask), kw = case("zoo", "multi_io").inputs()
            servers["multi_io"].predict(a, b, mask, **kw)  # in-process traffic shows too
            html = _dump_dom(url + "/", tmp_path / "chromium-profile")
            infos = {name: s.info() for name, s in servers.items()}
            http = {m["name"]: m["http"] for m in client.get("/v2/status").json()["models"]}
            metadata = {name: s.metadata() for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.shutdown(drain=False, timeout=2.0)

    page = _Figures()
    page.feed(html)
    assert page.attrs_by_id["state"].get("data-state") == "ok", "the page could not load /v2/status"
    assert page.attrs_by_id["models"]["data-count"] == "2"
    for name, info in infos.items():

        def value(field, name=name):
            raw = page.values.get((name, field))
            assert raw is not None, f"{name}: no {field} on the page"
            return json.loads(raw)

        for field in (
            "inference_count",
            "error_count",
            "rejected_count",
            "batch_count",
            "restarts",
            "batch_size",
        ):
            assert value(field) == info[field], (name, field)
            assert page.texts[(name, field)].strip().replace(",", "") == str(info[field]), (
                name,
                field,
            )
        assert value("mean_batch_size") == pytest.approx(info["mean_batch_size"])
        assert page.texts[(name, "mean_batch_size")].strip() == f"{info['mean_batch_size']:.2f}"
        # latency end to end, as the HTTP server measured it (in-process calls have none)
        for q in ("p50", "p95", "p99"):
            end_to_end = http[name]["latency_ms"][q]
            assert value(f"latency_{q}_ms") == pytest.approx(end_to_end), (name, q)
            assert page.texts[(name, f"latency_{q}_ms")].strip() == f"{end_to_end:.2f}"
        assert value("model_latency_p50_ms") == pytest.approx(info["latency_ms"]["p50"])
        assert value("errors_by_kind") == info["errors_by_kind"]
        for kind, count in info["errors_by_kind"].items():
            assert value(f"errors_{kind}") == count, (name, kind)
        assert (
            value("file") == Path(info["path"]).name and str(Path(info["path"]).parent) not in html
        )
        assert value("last_error") == info["last_error"]
        assert value("device") == info["device"] == "cpu"
        assert value("batch_size_distribution") == info["batch_size_distribution"]
        assert isinstance(value("throughput_rps"), (int, float)) and value("throughput_rps") >= 0
        assert page.texts[(name, "name")].strip() == name
        shown_inputs = [row for row in page.rows[(name, "inputs")][1:]]
        assert shown_inputs == [
            [i["name"], i["datatype"], "[" + ", ".join(map(str, i["shape"])) + "]"]
            for i in metadata[name]["inputs"]
        ]
        assert [row[0] for row in page.rows[(name, "outputs")][1:]] == [
            o["name"] for o in metadata[name]["outputs"]
        ]
    assert infos["mlp"]["inference_count"] == 12 and infos["mlp"]["rejected_count"] == 2
    assert infos["mlp"]["error_count"] == 0 and "missing input 'x'" in infos["mlp"]["last_error"]
    assert http["mlp"]["latency_samples"] == 12 and http["mlp"]["responses_by_class"] == {
        "2xx": 12,
        "4xx": 2,
    }
    assert http["multi_io"]["latency_samples"] == 0 and infos["multi_io"]["inference_count"] == 1


def test_chromium_is_the_debian_one():
    # The flags above are Chromium's; a snap wrapper or another browser under that name would
    # not take them. Cheap to check, and it names what ran.
    version = subprocess.run(
        [CHROMIUM, "--version"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    assert "Chromium" in version, version
    assert shutil.which("chromium")
