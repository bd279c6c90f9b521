"""The HTTP server under the faults a platform team meets: hostile bodies, stalled and vanishing
clients, deadlines, overload, large answers, shutdown with a client hanging, and metrics that
have to mean what they say. Real uvicorn on loopback, raw sockets where a client misbehaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
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

from pt2interp.serve import Server, oip  # noqa: E402
from pt2interp.serve.http import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("handoff")  # each test under both hand-offs

DYN_MLP = case("zoo", "dynamic_batch_mlp").path  # x: FP32 [-1, 16] -> out: FP32 [-1, 8]
WAIT = 20.0


@pytest.fixture
def serve(serve):
    """``serve(**server_kw)``: conftest's ``serve``, on the dynamic MLP."""
    return functools.partial(serve, DYN_MLP)


def _body(rows: int, seed: int = 0) -> tuple[bytes, torch.Tensor]:
    x = torch.randn(rows, 16, generator=torch.Generator().manual_seed(seed))
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, 16],
                    "datatype": "FP32",
                    "data": x.reshape(-1).tolist(),
                }
            ]
        }
    ).encode()
    return body, x


def _slow_runs(server: Server, seconds: float) -> list[int]:
    """Make every model run take ``seconds`` longer, and split large requests into runs of 4
    rows (as requests over the model's limit are); returns the rows of each run as it starts."""
    server._split_rows = 4
    original = server.program.run_leaves
    runs: list[int] = []

    def slow(*args, **kwargs):
        runs.append(int(args[0][0].shape[0]))
        time.sleep(seconds)
        return original(*args, **kwargs)

    server.program.run_leaves = slow
    return runs


def _raw_request(port: int, path: str, body: bytes, send_bytes: int | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:send_bytes])
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    size = int(headers["content-length"])
    while len(rest) < size:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:size]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _metric_samples(url: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=WAIT).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- hostile bodies --------------------------------------------------------------------------------
def test_deeply_nested_bodies_get_json_400_and_the_connection_stays_usable(serve):
    server = serve()
    deep = "[" * 1000 + "]" * 1000
    bodies = [
        f'{{"inputs": [{{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": {deep}}}]}}',
        f'{{"id": {deep}, "inputs": []}}',
        '{"id": "a", "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": %s}]}'
        % ("[" * 300 + "1.0" + "]" * 300),  # under the nesting limit, yet not the shape
        "[" * 100_000,
    ]
    with running(create_app([server])) as url:
        conn = http.client.HTTPConnection("127.0.0.1", _port(url), timeout=WAIT)  # one connection
        for body in bodies:
            conn.request(
                "POST",
                f"/v2/models/{server.name}/infer",
                body,
                {"Content-Type": "application/json"},
            )
            r = conn.getresponse()
            payload = r.read()
            assert r.status == 400 and r.getheader("content-type") == "application/json", payload[
                :200
            ]
            assert json.loads(payload)["error"]
        good, x = _body(2)
        conn.request("POST", f"/v2/models/{server.name}/infer", good)
        r = conn.getresponse()
        assert r.status == 200, r.read()
        got = torch.tensor(json.loads(r.read())["outputs"][0]["data"]).reshape(2, 8)
        assert torch.allclose(got, pt2interp.load(DYN_MLP)(x), rtol=1e-5, atol=1e-6)
        samples = _metric_samples(url)
    key = (
        "pt2interp_http_responses_total",
        (("class", "4xx"), ("code", "400"), ("model", server.name)),
    )
    assert samples[key] == len(bodies)
    assert server.info()["rejected_count"] == len(bodies) and server.info()["error_count"] == 0


def test_a_huge_model_name_is_not_echoed(serve):
    server = serve()
    with running(create_app([server])) as url:
        sock = _raw_request(_port(url), f"/v2/models/{'m' * 10_000}/infer", b'{"inputs": []}')
        status, _, payload = _read_response(sock)
        sock.close()
        assert (
            status == 404
            and len(payload) < 500
            and "(10000 characters)" in json.loads(payload)["error"]
        )
        # past 64 KiB uvicorn refuses the request line itself: a short answer, or a closed
        # connection
        sock = _raw_request(_port(url), f"/v2/models/{'m' * 100_000}/infer", b'{"inputs": []}')
        sock.settimeout(WAIT)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        sock.close()
        assert len(received) < 1000, received[:200]


# -- stalled and vanishing clients -----------------------------------------------------------------
def test_a_stalled_body_gets_408_and_the_connection_is_closed(serve):
    server = serve()
    body, _ = _body(4)
    with running(create_app([server], body_timeout_s=0.5)) as url:
        sock = _raw_request(_port(url), f"/v2/models/{server.name}/infer", body, send_bytes=20)
        started = time.monotonic()
        status, headers, payload = _read_response(sock)
        assert status == 408 and "did not arrive within 0.5 s" in json.loads(payload)["error"]
        assert time.monotonic() - started < 5 and headers.get("connection") == "close"
        assert sock.recv(1) == b""  # closed by the server
        sock.close()
        assert httpx.get(url + "/v2/health/live", timeout=WAIT).status_code == 200


def test_a_client_that_goes_away_stops_its_request(serve):
    server = serve(batch_size=4)
    runs = _slow_runs(server, 0.02)
    body, _ = _body(400)  # 100 runs of 4 rows: 2 s or more
    with running(create_app([server])) as url:
        sock = _raw_request(_port(url), f"/v2/models/{server.name}/infer", body)
        deadline = time.monotonic() + WAIT
        while not runs and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        sock.close()  # the client is gone
        deadline = time.monotonic() + WAIT
        while server.info()["cancelled_count"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        made = len(runs)
        time.sleep(0.3)
        assert server.info()["cancelled_count"] == 1 and len(runs) <= made + 1 and made < 60, (
            made,
            len(runs),
        )
        samples = _metric_samples(url)
    key = (
        "pt2interp_http_responses_total",
        (("class", "4xx"), ("code", "499"), ("model", server.name)),
    )
    assert samples[key] == 1
    assert server.info()["inference_count"] == 0 and server.info()["error_count"] == 0


def test_past_its_deadline_a_request_is_dropped_and_the_next_one_is_answered(serve):
    server = serve(batch_size=4)
    runs = _slow_runs(server, 0.02)
    big, _ = _body(400)
    small, _x = _body(1, seed=3)
    with running(create_app([server], request_timeout_s=0.5)) as url:
        r = httpx.post(f"{url}/v2/models/{server.name}/infer", content=big, timeout=WAIT)
        assert r.status_code == 504 and "no answer within 0.5 s" in r.json()["error"]
        made = len(runs)
        r = httpx.post(f"{url}/v2/models/{server.name}/infer", content=small, timeout=WAIT)
        assert r.status_code == 200, r.text
    assert len(runs) <= made + 2, (made, len(runs))  # the big one stopped at its next run
    info = server.info()
    assert info["timeout_count"] == 1 and info["inference_count"] == 1 and info["error_count"] == 0


# -- overload --------------------------------------------------------------------------------------
def _hold_worker(server: Server):
    release, entered = threading.Event(), threading.Event()
    original = server.program.run_leaves

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(WAIT)
        return original(*args, **kwargs)

    server.program.run_leaves = held
    return entered, release


@pytest.mark.parametrize("bound", ["rows", "bytes"])
def test_queued_rows_and_inflight_bytes_are_bounded_with_retry_after(serve, bound):
    server = serve()
    first, _ = _body(4)
    more, _ = _body(8, seed=1)
    limits = (
        {"max_queued_rows": 10} if bound == "rows" else {"max_inflight_bytes": len(first) + 100}
    )
    with (
        running(create_app([server], **limits)) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
    ):
        entered, release = _hold_worker(server)
        pending = threading.Thread(
            target=client.post, args=(f"/v2/models/{server.name}/infer",), kwargs={"content": first}
        )
        pending.start()
        assert entered.wait(WAIT)
        r = client.post(f"/v2/models/{server.name}/infer", content=more)
        assert (
            r.status_code == (429 if bound == "rows" else 503) and r.headers["retry-after"] == "1"
        ), r.text
        assert (
            "4 rows waiting (at most 10)" if bound == "rows" else "bytes of requests"
        ) in r.json()["error"]
        release.set()
        pending.join(WAIT)
        assert client.post(f"/v2/models/{server.name}/infer", content=more).status_code == 200
        samples = _metric_samples(url)
    assert samples[("pt2interp_http_inflight_rows", (("model", server.name),))] == 0
    assert samples[("pt2interp_http_inflight_bytes", (("model", server.name),))] == 0
    assert (
        server.info()["errors_by_kind"]["unavailable"] == 1
        and server.info()["inference_count"] == 2
    )


def test_large_answers_are_encoded_off_the_event_loop(serve, monkeypatch):
    server = serve(batch_size=1024)  # runs of up to 1,024 rows: a larger request is split
    threads = []
    encode = oip.encode_response

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return encode(*args, **kwargs)

    monkeypatch.setattr("pt2interp.serve.http.encode_response", spy)
    with running(create_app([server])) as url, httpx.Client(base_url=url, timeout=WAIT) as client:
        for rows in (1, 8192):  # 8 and 65,536 values
            body, _x = _body(rows)
            r = client.post(f"/v2/models/{server.name}/infer", content=body)
            assert r.status_code == 200
        loop_thread = threads[0]
    assert threads[1] is not loop_thread, "a 65,536-value answer was encoded on the event loop"


def test_request_duration_covers_encoding(serve, monkeypatch):
    server = serve()
    encode = oip.encode_response

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return encode(*args, **kwargs)

    monkeypatch.setattr("pt2interp.serve.http.encode_response", slow)
    with running(create_app([server])) as url:
        body, _ = _body(1)
        assert (
            httpx.post(
                f"{url}/v2/models/{server.name}/infer", content=body, timeout=WAIT
            ).status_code
            == 200
        )
        samples = _metric_samples(url)
    assert (
        samples[("pt2interp_http_request_duration_seconds_sum", (("model", server.name),))] >= 0.3
    )
    # while the server's own figures (queue + compute) know nothing of it
    assert server.info()["compute_seconds"]["sum"] < 0.3


# -- errors that must not leak ---------------------------------------------------------------------
def test_model_failures_are_500_without_server_paths(serve, tmp_path):
    server = serve()
    secret = tmp_path / "private" / "weights.bin"

    def failing(*args, **kwargs):
        raise RuntimeError(f"could not read {secret}: no such file")

    server.program.run_leaves = failing
    with running(create_app([server])) as url:
        body, _ = _body(1)
        r = httpx.post(f"{url}/v2/models/{server.name}/infer", content=body, timeout=WAIT)
        status = httpx.get(url + "/v2/status", timeout=WAIT).text
    assert (
        r.status_code == 500 and "weights.bin" in r.json()["error"] and str(tmp_path) not in r.text
    )
    assert str(tmp_path) not in status and str(DYN_MLP.parent) not in status
    assert server.info()["error_count"] == 1 and server.info()["errors_by_kind"]["model"] == 1


def test_not_ready_is_a_4xx_as_the_spec_says(serve):
    server = serve()
    with running(create_app([server])) as url:
        assert httpx.get(url + "/v2/health/ready", timeout=WAIT).status_code == 200
        server.shutdown()
        r = httpx.get(url + "/v2/health/ready", timeout=WAIT)
        assert r.status_code == 400 and r.json() == {"ready": False}
        r = httpx.get(f"{url}/v2/models/{server.name}/ready", timeout=WAIT)
        assert r.status_code == 400 and r.json()["ready"] is False
        body, _ = _body(1)
        r = httpx.post(f"{url}/v2/models/{server.name}/infer", content=body, timeout=WAIT)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


# -- metrics ---------------------------------------------------------------------------------------
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def test_metrics_follow_prometheus_conventions(serve):
    server = serve(batch_size=4, batch_timeout_ms=1)
    with running(create_app([server])) as url:
        body, _ = _body(2)
        assert (
            httpx.post(
                f"{url}/v2/models/{server.name}/infer", content=body, timeout=WAIT
            ).status_code
            == 200
        )
        text = httpx.get(url + "/metrics", timeout=WAIT).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        if name.endswith("_created"):
            continue  # the creation times prometheus_client adds to counters and histograms
        assert _NAME.fullmatch(name), name
        assert (
            not any("quantile" in s.labels for s in family.samples) or family.type == "summary"
        ), name
        if family.type == "counter":
            assert all(s.name in (name + "_total", name + "_created") for s in family.samples), name
        if family.type == "histogram":
            suffixes = {s.name[len(name) :] for s in family.samples}
            assert (
                suffixes <= {"_bucket", "_sum", "_count", "_created"} and "_bucket" in suffixes
            ), name
        if name.startswith("pt2interp_") and ("duration" in name or "latency" in name):
            assert name.endswith("_seconds") and family.type == "histogram", name
    for standard in (
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "python_info",
        "python_gc_objects_collected",
    ):
        assert standard in families, f"{standard} is missing"
    for ours in (
        "pt2interp_http_responses",
        "pt2interp_http_request_duration_seconds",
        "pt2interp_inferences",
        "pt2interp_inference_errors",
        "pt2interp_request_failures",
        "pt2interp_queue_duration_seconds",
        "pt2interp_compute_duration_seconds",
        "pt2interp_batch_rows",
        "pt2interp_model_runs",
    ):
        assert ours in families, f"{ours} is missing"
    assert "pt2interp_inference_latency_seconds" not in families  # the old quantile gauge


# -- shutdown --------------------------------------------------------------------------------------
def test_sigterm_with_a_stalled_client_exits_within_the_grace_period(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "pt2interp.cli",
        "serve",
        f"mlp={DYN_MLP}",
        "--port",
        str(port),
        "--graceful-timeout",
        "2",
        "--body-timeout",
        "120",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sock = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code
                    == 200
                ):
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        body, _ = _body(64)
        sock = _raw_request(port, "/v2/models/mlp/infer", body, send_bytes=100)  # and then nothing
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - started
        assert took < 2 + 5, f"exit took {took:.1f} s with a 2 s grace period"
        assert code == 0
        sock.settimeout(5)
        with contextlib.suppress(OSError, AssertionError):
            status, _, payload = _read_response(sock)  # if an answer came, it says why
            assert status == 503 and "shutting down" in json.loads(payload)["error"]
    finally:
        if sock is not None:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- batching without waiting for nobody -----------------------------------------------------------
def test_a_lone_request_does_not_wait_out_the_batch_timeout(serve):
    server = serve(batch_size=16, batch_timeout_ms=3000)
    with running(create_app([server])) as url, httpx.Client(base_url=url, timeout=WAIT) as client:
        body, _ = _body(1)
        for _ in range(3):
            started = time.monotonic()
            r = client.post(f"/v2/models/{server.name}/infer", content=body)
            took = time.monotonic() - started
            assert r.status_code == 200 and took < 1.5, (
                f"a lone request took {took:.2f} s (timeout 3 s)"
            )
    # a server with no front end cannot know what is coming: there the batch waits, as configured
    alone = serve(batch_size=16, batch_timeout_ms=3000)
    future = alone.submit(torch.randn(1, 16))
    time.sleep(0.5)
    assert not future.done()
    assert alone.predict(torch.randn(15, 16)).shape == (15, 8)  # fills the run of 16
    assert future.result(WAIT).shape == (1, 8)
    assert alone.info()["batch_size_distribution"] == {"16": 1}


def test_answers_from_many_threads_reach_every_waiter():
    """The inbox that hands worker answers to the event loop wakes it once per burst and never
    drops an answer, whatever the interleaving of posting threads and draining loop."""
    from pt2interp.serve.http import _LoopInbox

    async def main():
        loop = asyncio.get_running_loop()
        inbox = _LoopInbox(loop)
        waiters = [loop.create_future() for _ in range(4000)]
        wakes = []
        drain = inbox.drain
        inbox.drain = lambda: (wakes.append(1), drain())

        def poster(k):
            for i in range(k, len(waiters), 4):
                inbox.post(waiters[i], i, None if i % 7 else ValueError(i))

        threads = [threading.Thread(target=poster, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), WAIT)
        for t in threads:
            t.join()
        return results, len(wakes)

    results, wakes = asyncio.run(main())
    assert [r.args[0] if isinstance(r, ValueError) else r for r in results] == list(range(4000))
    assert all(isinstance(r, ValueError) == (i % 7 == 0) for i, r in enumerate(results))
    assert 1 <= wakes < 4000
