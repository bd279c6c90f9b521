"""The HTTP server for real: uvicorn on a free loopback port in a background thread, driven
with httpx. Open Inference Protocol v2 routes, every error case, /metrics, a fault stream and a
bounded load test (32 clients x 200 requests, batching off and on; ``-s`` prints the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fixture_cases import case
from helpers import running
from prometheus_client.parser import text_string_to_metric_families

import pt2interp

pytest.importorskip("fastapi", reason="fastapi is in the serve extras")
pytest.importorskip("uvicorn", reason="uvicorn is in the serve extras")

from pt2interp.serve import Server  # noqa: E402
from pt2interp.serve.http import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("handoff")  # each test under both hand-offs

DYN_MLP = case("zoo", "dynamic_batch_mlp").path
MULTI_IO = case("zoo", "multi_io").path
CNN = case("zoo", "small_cnn").path
MAX_BODY = 256 * 1024
# the bounded load test; lower these on a very slow machine
CLIENTS = int(os.environ.get("PT2INTERP_LOAD_CLIENTS", "32"))
REQUESTS_EACH = int(os.environ.get("PT2INTERP_LOAD_REQUESTS", "200"))


@pytest.fixture(scope="module")
def servers(handoff):
    made = {
        "mlp": Server(DYN_MLP, name="http-mlp"),  # batching off
        "mlp_batched": Server(DYN_MLP, name="http-mlp-batched", batch_size=16, batch_timeout_ms=2),
        "multi_io": Server(MULTI_IO, name="http-multi-io"),
        "cnn": Server(
            CNN, name="http-cnn", batch_size=8, batch_timeout_ms=2
        ),  # static batch of 2: padded
    }
    yield made
    for s in made.values():
        s.shutdown(drain=False, timeout=2.0)


@pytest.fixture(scope="module")
def url(servers):
    with running(create_app(servers, max_body_bytes=MAX_BODY)) as base:
        yield base


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def tensor_json(name, t: torch.Tensor, datatype=None) -> dict:
    datatype = (
        datatype or {torch.float32: "FP32", torch.int64: "INT64", torch.bool: "BOOL"}[t.dtype]
    )
    return {
        "name": name,
        "shape": list(t.shape),
        "datatype": datatype,
        "data": t.reshape(-1).tolist(),
    }


def output_tensor(out: dict) -> torch.Tensor:
    dtype = {"FP32": torch.float32, "INT64": torch.int64, "BOOL": torch.bool}[out["datatype"]]
    return torch.tensor(out["data"], dtype=dtype).reshape(out["shape"])


# -- health and metadata ---------------------------------------------------------------------------
def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "pt2interp"
    assert {m["name"] for m in client.get("/v2/models").json()["models"]} == {
        "mlp",
        "mlp_batched",
        "multi_io",
        "cnn",
    }


def test_model_metadata_and_ready(client):
    mlp = client.get("/v2/models/mlp").json()
    assert mlp["name"] == "mlp" and mlp["platform"] == "pt2interp"
    assert mlp["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert mlp["outputs"] == [{"name": "out", "datatype": "FP32", "shape": [-1, 8]}]
    multi = client.get("/v2/models/multi_io").json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in multi["inputs"]] == [
        ("a", "FP32", [5, 6]),
        ("b", "FP32", [5, 3]),
        ("mask", "BOOL", [5, 4]),
        ("scale", "FP32", [4]),
    ]
    assert [(o["name"], o["datatype"]) for o in multi["outputs"]] == [
        ("out.sum", "FP32"),
        ("out.pair.0", "FP32"),
        ("out.pair.1", "INT64"),
        ("out.cat", "FP32"),
    ]
    cnn = client.get("/v2/models/cnn/versions/1").json()
    assert cnn["inputs"][0]["shape"] == [-1, 3, 16, 16]  # batched with padding: any row count
    r = client.get("/v2/models/cnn/ready")
    assert r.status_code == 200 and r.json() == {"name": "cnn", "ready": True}


# -- inference -------------------------------------------------------------------------------------
def test_infer_on_two_models_matches_direct_calls(client):
    x = torch.randn(3, 16)
    r = client.post("/v2/models/mlp/infer", json={"id": "req-1", "inputs": [tensor_json("x", x)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "mlp" and body["id"] == "req-1"
    assert torch.equal(output_tensor(body["outputs"][0]), pt2interp.load(DYN_MLP)(x))

    (a, b, mask), kw = case("zoo", "multi_io").inputs()
    inputs = [
        tensor_json("a", a),
        tensor_json("b", b),
        tensor_json("mask", mask),
        tensor_json("scale", kw["scale"]),
    ]
    r = client.post("/v2/models/multi_io/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    got = {o["name"]: output_tensor(o) for o in r.json()["outputs"]}
    want = pt2interp.load(MULTI_IO)(a, b, mask, **kw)
    assert torch.equal(got["out.sum"], want["sum"]) and torch.equal(got["out.cat"], want["cat"])
    assert torch.equal(got["out.pair.0"], want["pair"][0]) and torch.equal(
        got["out.pair.1"], want["pair"][1]
    )

    # only the outputs asked for; nested (not flattened) data is accepted too
    nested = dict(inputs[0], data=a.tolist())
    r = client.post(
        "/v2/models/multi_io/infer",
        json={"inputs": [nested, *inputs[1:]], "outputs": [{"name": "out.pair.1"}]},
    )
    assert [o["name"] for o in r.json()["outputs"]] == ["out.pair.1"]


def test_infer_pads_a_static_batch(client):
    x = torch.randn(1, 3, 16, 16)
    r = client.post("/v2/models/cnn/infer", json={"inputs": [tensor_json("x", x)]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 10]
    want = pt2interp.load(CNN)(torch.cat([x, x]))[:1]
    assert torch.allclose(output_tensor(out), want, rtol=1e-5, atol=1e-6)


# -- errors ----------------------------------------------------------------------------------------
def _x(shape=(2, 16), **over):
    t = {
        "name": "x",
        "shape": list(shape),
        "datatype": "FP32",
        "data": [0.5] * (shape[0] * shape[1]),
    }
    t.update(over)
    return t


ERROR_CASES = [
    # (id, path, body (dict, or bytes sent raw), status, words in the error)
    ("unknown model", "/v2/models/nope/infer", {"inputs": [_x()]}, 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/mlp/versions/7/infer", {"inputs": [_x()]}, 404, "version '7'"),
    (
        "wrong datatype",
        "/v2/models/mlp/infer",
        {"inputs": [_x(datatype="FP64")]},
        400,
        "datatype FP64 does not match the model's FP32",
    ),
    (
        "unknown datatype",
        "/v2/models/mlp/infer",
        {"inputs": [_x(datatype="FP33")]},
        400,
        "unknown datatype 'FP33'",
    ),
    (
        "shape/data mismatch",
        "/v2/models/mlp/infer",
        {"inputs": [_x(data=[0.5] * 31)]},
        400,
        "holds 32 values but data has 31",
    ),
    ("missing input", "/v2/models/mlp/infer", {"inputs": []}, 400, "missing input 'x'"),
    (
        "unknown input",
        "/v2/models/mlp/infer",
        {"inputs": [_x(), _x(name="y")]},
        400,
        "no input 'y'",
    ),
    ("input twice", "/v2/models/mlp/infer", {"inputs": [_x(), _x()]}, 400, "given twice"),
    (
        "wrong size",
        "/v2/models/mlp/infer",
        {"inputs": [_x(shape=(2, 15))]},
        400,
        "dim 1: expected 16, got 15",
    ),
    (
        "wrong rank",
        "/v2/models/mlp/infer",
        {"inputs": [_x(shape=(32, 1), data=[0.5] * 32) | {"shape": [32]}]},
        400,
        "expected 2 dimensions",
    ),
    (
        "strings as data",
        "/v2/models/mlp/infer",
        {"inputs": [_x(data=["a"] * 32)]},
        400,
        "the only strings float data may hold",
    ),
    (
        "bools as ints",
        "/v2/models/multi_io/infer",
        {"inputs": [{"name": "mask", "shape": [1], "datatype": "BOOL", "data": [1]}]},
        400,
        "true or false",
    ),
    (
        "negative shape",
        "/v2/models/mlp/infer",
        {"inputs": [_x(shape=(2, 16)) | {"shape": [-2, 16]}]},
        400,
        "non-negative integers",
    ),
    (
        "no shape",
        "/v2/models/mlp/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "data": []}]},
        400,
        "has no 'shape'",
    ),
    (
        "unknown output",
        "/v2/models/mlp/infer",
        {"inputs": [_x()], "outputs": [{"name": "logits"}]},
        400,
        "no output 'logits'",
    ),
    ("no inputs list", "/v2/models/mlp/infer", {"input": []}, 400, 'needs "inputs"'),
    ("not an object", "/v2/models/mlp/infer", b"[1, 2]", 400, "must be a JSON object"),
    ("invalid JSON", "/v2/models/mlp/infer", b'{"inputs": [', 400, "not valid JSON"),
    ("body over the limit", "/v2/models/mlp/infer", b"x" * (MAX_BODY + 1), 413, "over the limit"),
]


@pytest.mark.parametrize(
    "path, body, status, words", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_requests_get_4xx_json_naming_the_problem(client, path, body, status, words):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert words in r.json()["error"]
    assert client.get("/v2/health/live").status_code == 200  # still up
    assert client.post("/v2/models/mlp/infer", json={"inputs": [_x()]}).status_code == 200


def test_a_chunked_body_over_the_limit_gets_413(client):
    def chunks():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096

    r = client.post("/v2/models/mlp/infer", content=chunks())  # no Content-Length
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_unknown_routes_and_models_get_json_404(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v2/models/nope")
    assert (
        r.status_code == 404
        and "unknown model 'nope' (models: cnn, mlp, mlp_batched, multi_io)" in r.json()["error"]
    )
    assert client.get("/v2/models/nope/ready").status_code == 404


# -- metrics ---------------------------------------------------------------------------------------
def _metrics(client) -> dict[tuple, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_count_requests_latency_batches_and_errors(client, servers):
    before = _metrics(client)
    (a, b, mask), kw = case("zoo", "multi_io").inputs()
    good = {
        "inputs": [
            tensor_json("a", a),
            tensor_json("b", b),
            tensor_json("mask", mask),
            tensor_json("scale", kw["scale"]),
        ]
    }
    for _ in range(3):
        assert client.post("/v2/models/multi_io/infer", json=good).status_code == 200
    for _ in range(2):
        assert client.post("/v2/models/multi_io/infer", json={"inputs": []}).status_code == 400
    client.post("/v2/models/nope/infer", json=good)
    after = _metrics(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    responses = "pt2interp_http_responses_total"
    assert delta(responses, model="multi_io", code="200", **{"class": "2xx"}) == 3
    assert delta(responses, model="multi_io", code="400", **{"class": "4xx"}) == 2
    assert delta(responses, model="_unknown", code="404", **{"class": "4xx"}) == 1
    assert delta("pt2interp_http_request_duration_seconds_count", model="multi_io") == 5
    assert delta("pt2interp_inferences_total", model="multi_io") == 3
    # malformed requests are the client's errors, not the model's
    assert delta("pt2interp_inference_errors_total", model="multi_io") == 0
    assert delta("pt2interp_request_failures_total", model="multi_io", kind="input") == 2
    assert delta("pt2interp_queue_duration_seconds_count", model="multi_io") == 3
    assert delta("pt2interp_compute_duration_seconds_count", model="multi_io") == 3
    for name, server in servers.items():
        info = server.info()
        assert after[("pt2interp_inferences_total", (("model", name),))] == info["inference_count"]
        assert (
            after[("pt2interp_inference_errors_total", (("model", name),))] == info["error_count"]
        )
        assert after[("pt2interp_batch_rows_count", (("model", name),))] == info["batch_count"]
        assert after[("pt2interp_model_runs_total", (("model", name),))] == info["batch_count"]
        assert after[("pt2interp_model_ready", (("model", name),))] == 1.0
        assert after[("pt2interp_worker_restarts_total", (("model", name),))] == 0
        for kind, n in info["errors_by_kind"].items():
            assert (
                after[("pt2interp_request_failures_total", (("kind", kind), ("model", name)))] == n
            )
    assert ("pt2interp_batch_rows_bucket", (("le", "+Inf"), ("model", "cnn"))) in after


# -- faults ----------------------------------------------------------------------------------------
def test_every_fifth_request_malformed(url, servers):
    """40 requests from 4 concurrent clients, every fifth malformed in a different way."""
    server = servers["cnn"]
    before = server.info()
    direct = pt2interp.load(CNN)
    malformed = [
        lambda x: {"inputs": [tensor_json("x", x[:, :, :15])]},  # wrong size
        lambda x: {"inputs": [tensor_json("x", x, datatype="FP64")]},  # wrong datatype
        lambda x: {"inputs": []},  # missing input
        lambda x: {"inputs": [dict(tensor_json("x", x), data=[0.0] * 7)]},  # shape/data mismatch
        lambda x: {"inputs": [dict(tensor_json("x", x), data=["?"] * x.numel())]},  # not numbers
    ]
    gen = torch.Generator().manual_seed(5)
    plan = []
    for i in range(40):
        x = torch.randn(1, 3, 16, 16, generator=gen)
        plan.append(
            (
                x,
                malformed[(i // 5) % len(malformed)](x)
                if i % 5 == 4
                else {"inputs": [tensor_json("x", x)]},
            )
        )

    async def drive():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:

            async def worker(k):
                return [
                    (i, await c.post("/v2/models/cnn/infer", json=plan[i][1]))
                    for i in range(k, len(plan), 4)
                ]

            return [
                r for part in await asyncio.gather(*(worker(k) for k in range(4))) for r in part
            ]

    replies = dict(asyncio.run(drive()))
    for i, (x, _) in enumerate(plan):
        r = replies[i]
        if i % 5 == 4:
            assert r.status_code == 400 and r.json()["error"], f"request {i}: {r.text}"
        else:
            assert r.status_code == 200, f"request {i}: {r.text}"
            want = direct(torch.cat([x, x]))[:1]
            assert torch.allclose(output_tensor(r.json()["outputs"][0]), want, rtol=1e-5, atol=1e-6)
    after = server.info()
    assert after["rejected_count"] - before["rejected_count"] == 8
    assert after["error_count"] == before["error_count"]
    assert after["inference_count"] - before["inference_count"] == 32
    assert after["restarts"] == 0


# -- load ------------------------------------------------------------------------------------------
# The load clients run in a child process (so that client and server do not share one GIL) on
# Python's own HTTP/1.1 client, one keep-alive connection per client thread: httpx costs more
# CPU per request than the server under test, and the clients would measure themselves.
_LOAD_CLIENT = r"""
import http.client, json, sys, threading, time
host, port, model, clients, each, out_path = sys.argv[1:7]
port, clients, each = int(port), int(clients), int(each)
results = [[] for _ in range(clients)]
start = threading.Barrier(clients)

def client(k):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    start.wait()
    for i in range(each):
        body = json.dumps({"id": f"{k}-{i}", "inputs": [{
            "name": "x", "shape": [1, 16], "datatype": "FP32",
            "data": [(k * each + i) * 0.01 + j * 0.1 for j in range(16)]}]})
        t0 = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body,
                     {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        results[k].append([f"{k}-{i}", reply.status, time.perf_counter() - t0, json.loads(data)])
    conn.close()

threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out_path, "w") as f:
    json.dump({"elapsed": time.perf_counter() - t0, "results": results}, f)
"""


def _load_run(url: str, model: str, out_path) -> tuple[dict[str, dict], list[float], float]:
    """CLIENTS concurrent clients x REQUESTS_EACH requests, each with its own data and id."""
    host, port = url.rsplit("//", 1)[1].split(":")
    subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_CLIENT,
            host,
            port,
            model,
            str(CLIENTS),
            str(REQUESTS_EACH),
            str(out_path),
        ],
        check=True,
        timeout=120,
    )
    report = json.loads(out_path.read_text())
    replies: dict[str, dict] = {}
    latencies: list[float] = []
    for per_client in report["results"]:
        for sent_id, status, seconds, body in per_client:
            assert status == 200, body
            assert body["id"] == sent_id, "a reply came back to the wrong request"
            assert sent_id not in replies, "a reply was duplicated"
            replies[sent_id] = body
            latencies.append(seconds)
    return replies, sorted(latencies), report["elapsed"]


def test_load_32_clients_every_reply_is_the_right_one(url, servers, tmp_path):
    direct = pt2interp.load(DYN_MLP)
    figures = {}
    for model in ("mlp", "mlp_batched"):
        server = servers[model]
        before = server.info()
        replies, latencies, elapsed = _load_run(url, model, tmp_path / f"{model}.json")
        total = CLIENTS * REQUESTS_EACH
        assert len(replies) == total  # nothing lost
        # every reply against a direct call on the very data its request carried
        ids = sorted(replies)
        xs = torch.tensor(
            [
                [(int(k) * REQUESTS_EACH + int(i)) * 0.01 + j * 0.1 for j in range(16)]
                for k, i in (s.split("-") for s in ids)
            ]
        )
        want = torch.cat([direct(xs[s : s + 1024]) for s in range(0, len(xs), 1024)])
        got = torch.tensor([replies[s]["outputs"][0]["data"] for s in ids])
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        after = server.info()
        assert after["inference_count"] - before["inference_count"] == total  # nothing duplicated
        assert after["error_count"] == before["error_count"]
        runs = after["batch_count"] - before["batch_count"]
        figures[model] = (
            total / elapsed,
            latencies[len(latencies) // 2] * 1000,
            latencies[int(len(latencies) * 0.99)] * 1000,
            total / runs,
        )
    print(
        f"\nHTTP load, {CLIENTS} clients x {REQUESTS_EACH} requests, dynamic_batch_mlp, loopback:"
    )
    print(f"{'batching':<16}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'rows/run':>10}")
    for model, label in (("mlp", "off (1)"), ("mlp_batched", "on (16, 2 ms)")):
        rps, p50, p99, per_run = figures[model]
        print(f"{label:<16}{rps:>8.0f}{p50:>9.2f}{p99:>9.2f}{per_run:>10.2f}")
    assert figures["mlp_batched"][3] > 1.2  # batching really happened under load


# -- the command line ------------------------------------------------------------------------------
def test_cli_serve_answers_and_stops(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "pt2interp.cli",
        "serve",
        str(DYN_MLP),
        f"io={MULTI_IO}",
        "--port",
        str(port),
        "--batch-size",
        "4",
        "--batch-timeout-ms",
        "1",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "pt2interp serve did not come up"
            time.sleep(0.2)
        assert {m["name"] for m in httpx.get(f"{base}/v2/models").json()["models"]} == {
            "dynamic_batch_mlp",
            "io",
        }
        r = httpx.post(f"{base}/v2/models/dynamic_batch_mlp/infer", json={"inputs": [_x()]})
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 8]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "serving on http://127.0.0.1" in out, out


def test_status_json_matches_info(client, servers):
    status = client.get("/v2/status").json()
    by_name = {m["name"]: m for m in status["models"]}
    assert set(by_name) == set(servers)
    for name, server in servers.items():
        info = server.info()
        shown = by_name[name]["info"]
        for key in ("device", "batch_size", "inference_count", "error_count", "batch_count"):
            assert shown[key] == info[key], key
        assert shown["path"] == server.path.name  # the file, never where the server keeps it
        assert by_name[name]["metadata"]["inputs"] == server.metadata()["inputs"]
    assert json.loads(json.dumps(status)) == status
