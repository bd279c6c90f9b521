"""The Open Inference Protocol v2 over HTTP (the REST API of KServe and Triton), Prometheus
metrics and a live status page, for one or more :class:`~pt2interp.serve.Server` objects.

>>> from fastapi.testclient import TestClient
>>> from pt2interp.serve import Server
>>> server = Server("fixtures/zoo/mlp.pt2", name="doc-http")
>>> client = TestClient(create_app([server]))
>>> client.post("/v2/models/doc-http/infer", json={"inputs": [
...     {"name": "x", "shape": [4, 16], "datatype": "FP32", "data": [0.0] * 64}]}).json()["outputs"][0]["shape"]
[4, 8]
>>> server.shutdown()

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models``,
``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``
(each model route also under ``/v2/models/{name}/versions/1/...``), ``GET /v2/status`` (what
the status page shows, as JSON), ``GET /metrics`` and ``GET /`` (the status page).

Errors answer ``{"error": "..."}`` with a 4xx status naming the problem (unknown model 404,
body over ``max_body_bytes`` 413, anything wrong with the request 400) or a 5xx for the
server's own trouble (shut down or restarting 503, timeout 504, the model raised 500). Request
errors for a known model count in that server's ``error_count`` like any failed predict.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Mapping
from importlib.resources import files
from typing import Any

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException

import pt2interp
from pt2interp import jsontext
from pt2interp.errors import InputMismatchError
from pt2interp.serve.batching import DTYPE_OF_OIP, BatchLayout
from pt2interp.serve.server import (
    ModelUnavailableError,
    RequestTimeoutError,
    Server,
    ServerClosedError,
    WorkerCrashedError,
)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Bodies above this are decoded in a worker thread, keeping the event loop responsive.
_DECODE_IN_THREAD_BYTES = 256 * 1024
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_UNKNOWN_MODEL = "_unknown"   # metrics label for names no server has (keeps label values bounded)

# What JSON values each datatype's "data" may hold (bool is an int in Python: excluded on purpose).
_FLOAT_TYPES = (int, float)
_JSON_TYPES = {"BOOL": (bool,)} | {dt: (int,) for dt in DTYPE_OF_OIP if dt.startswith(("INT", "UINT"))} \
    | {dt: _FLOAT_TYPES for dt in ("FP16", "BF16", "FP32", "FP64")}


class RequestError(Exception):
    """A request the server refuses: ``status`` and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(servers: Server | Iterable[Server] | Mapping[str, Server], *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, request_timeout_s: float | None = None) -> FastAPI:
    """A FastAPI app serving ``servers`` (by their names, or the mapping's keys).

    ``max_body_bytes`` bounds an infer request's body (413 above it); ``request_timeout_s``
    (default: each server's own) bounds the wait for a result (504). Prometheus metrics go to a
    registry of this app's own, so several apps can live in one process. The app does not shut
    the servers down: their owner does.
    """
    if isinstance(servers, Server):
        servers = [servers]
    models: dict[str, Server] = dict(servers) if isinstance(servers, Mapping) else {s.name: s for s in servers}
    app = FastAPI(title="pt2interp", version=pt2interp.__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    registry = CollectorRegistry()
    requests_total = Counter("pt2interp_requests", "Infer requests by model and HTTP status.",
                             ["model", "status"], registry=registry)
    latency = Histogram("pt2interp_request_duration_seconds", "Infer request latency, body read to response.",
                        ["model"], buckets=_LATENCY_BUCKETS, registry=registry)
    registry.register(_ServerCollector(models))
    app.state.servers = models
    app.state.metrics_registry = registry
    status_page = files("pt2interp.serve").joinpath("static/status.html").read_text(encoding="utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _json({"error": str(exc.detail)}, exc.status_code)

    def lookup(name: str) -> Server:
        server = models.get(name)
        if server is None:
            raise RequestError(404, f"unknown model {name!r} (models: {', '.join(sorted(models)) or 'none'})")
        return server

    def check_version(version: str | None) -> None:
        if version is not None and version != "1":
            raise RequestError(404, f"unknown model version {version!r} (only version 1 exists)")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(status_page)

    @app.get("/v2")
    async def server_metadata():
        return _json({"name": "pt2interp", "version": pt2interp.__version__, "extensions": []})

    @app.get("/v2/health/live")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        ok = bool(models) and all(s.ready for s in models.values())
        return _json({"ready": ok}, 200 if ok else 503)

    @app.get("/v2/models")
    async def model_index():
        return _json({"models": [{"name": n, "ready": s.ready} for n, s in models.items()]})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        try:
            check_version(version)
            meta = lookup(name).metadata()
        except RequestError as exc:
            return _json({"error": str(exc)}, exc.status)
        meta["name"] = name
        return _json(meta)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        try:
            check_version(version)
            ok = lookup(name).ready
        except RequestError as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        started = time.perf_counter()
        label = name if name in models else _UNKNOWN_MODEL
        status, content = await _infer(models, name, version, request, max_body_bytes, request_timeout_s,
                                       lookup, check_version)
        requests_total.labels(label, str(status)).inc()
        latency.labels(label).observe(time.perf_counter() - started)
        return _json(content, status)

    @app.get("/v2/status")
    async def status():
        return _json({"time": time.time(), "version": pt2interp.__version__,
                      "models": [{"name": n, "info": s.info(), "metadata": s.metadata()} for n, s in models.items()]})

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _infer(models, name, version, request: Request, max_body_bytes: int, request_timeout_s,
                 lookup, check_version) -> tuple[int, dict]:
    """Run one infer request; returns (HTTP status, JSON body)."""
    try:
        check_version(version)
        server = lookup(name)
    except RequestError as exc:
        return exc.status, {"error": str(exc)}
    try:
        body = await _read_body(request, max_body_bytes)
        layout = server.layout
        if len(body) > _DECODE_IN_THREAD_BYTES:
            decoded = await anyio.to_thread.run_sync(_decode_request, body, layout)
        else:
            decoded = _decode_request(body, layout)
    except RequestError as exc:
        server.report_rejected(InputMismatchError(str(exc)))
        return exc.status, {"error": str(exc)}
    args, kwargs, wanted, request_id = decoded
    future = server.submit(*args, **kwargs)
    timeout = request_timeout_s if request_timeout_s is not None else server.request_timeout_s
    try:
        out = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except InputMismatchError as exc:
        return 400, {"error": str(exc)}
    except (ServerClosedError, ModelUnavailableError) as exc:
        return 503, {"error": str(exc)}
    except (TimeoutError, asyncio.TimeoutError, RequestTimeoutError):
        return 504, {"error": f"model {name!r}: no answer within {timeout:g} s"}
    except WorkerCrashedError as exc:
        return 500, {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the model's own failure, reported as a 500
        return 500, {"error": f"model {name!r} failed: {type(exc).__name__}: {exc}"}
    try:
        outputs = _encode_outputs(out, layout, wanted)
    except RequestError as exc:
        return exc.status, {"error": str(exc)}
    answer: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": outputs}
    if request_id is not None:
        answer["id"] = request_id
    return 200, answer


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise RequestError(413, f"request body of {size} bytes is over the limit of {limit} bytes")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def _decode_request(body: bytes, layout: BatchLayout) -> tuple[tuple, dict, list[str] | None, Any]:
    """JSON body -> (args, kwargs, requested output names or None, request id)."""
    try:
        payload = jsontext.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "request body must be a JSON object with an \"inputs\" list")
    tensors = payload.get("inputs")
    if not isinstance(tensors, list):
        raise RequestError(400, "request body needs \"inputs\": a list of tensors")
    slots = {s.name: s for s in layout.inputs}
    given: dict[str, Any] = {}
    for i, entry in enumerate(tensors):
        if not isinstance(entry, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype and data")
        name = entry.get("name")
        if not isinstance(name, str):
            raise RequestError(400, f"inputs[{i}] has no \"name\"")
        slot = slots.get(name)
        if slot is None or slot.kind not in ("tensor", "int"):
            known = [s.name for s in layout.inputs if s.kind in ("tensor", "int")]
            raise RequestError(400, f"the model has no input {name!r} (inputs: {', '.join(known)})")
        if name in given:
            raise RequestError(400, f"input {name!r} is given twice")
        given[name] = _decode_tensor(entry, slot)
    leaves = []
    for slot in layout.inputs:
        if slot.name in given:
            leaves.append(given[slot.name])
        elif slot.kind == "constant":
            leaves.append(slot.constant)
        else:
            raise RequestError(400, f"missing input {slot.name!r} ({slot.datatype} {slot.oip_shape})")
    try:
        args, kwargs = layout.unbind(leaves)
    except Exception as exc:  # noqa: BLE001 - a structure mismatch, whatever pytree raised
        raise RequestError(400, f"inputs do not fit the model's call: {exc}") from None
    wanted = None
    if payload.get("outputs") is not None:
        requested = payload["outputs"]
        if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                       for o in requested):
            raise RequestError(400, "\"outputs\" must be a list of objects with a \"name\"")
        wanted = [o["name"] for o in requested]
        known = {s.name for s in layout.outputs}
        for n in wanted:
            if n not in known:
                raise RequestError(400, f"the model has no output {n!r} (outputs: {', '.join(sorted(known))})")
    return args, kwargs, wanted, payload.get("id")


def _decode_tensor(entry: dict, slot) -> Any:
    name = slot.name
    for field in ("shape", "datatype", "data"):
        if field not in entry:
            raise RequestError(400, f"input {name!r} has no {field!r}")
    datatype, shape, data = entry["datatype"], entry["shape"], entry["data"]
    if not isinstance(datatype, str) or datatype not in _JSON_TYPES:
        supported = ", ".join(sorted(_JSON_TYPES))
        raise RequestError(400, f"input {name!r}: unknown datatype {datatype!r} (supported: {supported})")
    if datatype != slot.datatype:
        raise RequestError(400, f"input {name!r}: datatype {datatype} does not match the model's {slot.datatype}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(400, f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    flat = _flatten_data(data, name)
    count = math.prod(shape)
    if len(flat) != count:
        raise RequestError(400, f"input {name!r}: shape {shape} holds {count} values but data has {len(flat)}")
    allowed = _JSON_TYPES[datatype]
    for v in flat:
        if type(v) not in allowed:
            want = "true or false" if datatype == "BOOL" else "integers" if allowed == (int,) else "numbers"
            raise RequestError(400, f"input {name!r}: {datatype} data must be {want}, found {v!r}")
    if slot.kind == "int":
        if count != 1:
            raise RequestError(400, f"input {name!r} is a single integer: shape [1], got {shape}")
        return int(flat[0])
    dtype = getattr(torch, DTYPE_OF_OIP[datatype])
    try:
        return torch.tensor(flat, dtype=dtype).reshape(shape)
    except (RuntimeError, OverflowError, TypeError, ValueError) as exc:
        raise RequestError(400, f"input {name!r}: data does not fit {datatype}: {exc}") from None


def _flatten_data(data: Any, name: str) -> list:
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r}: data must be a list (flat, row-major, or nested)")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            flat.append(v)
        else:
            stack.pop()
    return flat


def _encode_outputs(out: Any, layout: BatchLayout, wanted: list[str] | None) -> list[dict]:
    leaves = layout.output_leaves(out)
    encoded = []
    for slot, value in zip(layout.outputs, leaves):
        if wanted is not None and slot.name not in wanted:
            continue
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu")
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.float()
            encoded.append({"name": slot.name, "datatype": slot.datatype, "shape": list(value.shape),
                            "data": t.reshape(-1).tolist()})
        elif isinstance(value, (bool, int, float)):
            datatype = "BOOL" if isinstance(value, bool) else "INT64" if isinstance(value, int) else "FP64"
            encoded.append({"name": slot.name, "datatype": datatype, "shape": [1], "data": [value]})
        else:
            raise RequestError(500, f"output {slot.name!r} is a {type(value).__name__}, which has no OIP form")
    return encoded


def _json(content: Any, status: int = 200) -> Response:
    # NaN and infinities pass through as JSON's common extension rather than failing the reply.
    return Response(json.dumps(content, separators=(",", ":"), allow_nan=True), status_code=status,
                    media_type="application/json")


class _ServerCollector:
    """Prometheus figures read from each server's ``info()`` at scrape time, so they equal what
    ``info()`` says (in-process predicts included) without any subscription to clean up."""

    def __init__(self, models: dict[str, Server]):
        self.models = models

    def collect(self):
        inferences = CounterMetricFamily("pt2interp_inferences", "Requests answered with a result.",
                                         labels=["model"])
        errors = CounterMetricFamily("pt2interp_inference_errors", "Requests answered with an error.",
                                     labels=["model"])
        batches = CounterMetricFamily("pt2interp_batches", "Model runs.", labels=["model"])
        restarts = CounterMetricFamily("pt2interp_worker_restarts", "Worker deaths followed by a reload.",
                                       labels=["model"])
        queue_depth = GaugeMetricFamily("pt2interp_queue_depth", "Requests waiting for the worker.",
                                        labels=["model"])
        ready = GaugeMetricFamily("pt2interp_model_ready", "1 when the model takes requests.", labels=["model"])
        quantiles = GaugeMetricFamily("pt2interp_inference_latency_seconds",
                                      "Latency percentiles over the last 10,000 successful requests.",
                                      labels=["model", "quantile"])
        batch_size = HistogramMetricFamily("pt2interp_batch_size", "Rows per model run.", labels=["model"])
        for name, server in self.models.items():
            info = server.info()
            inferences.add_metric([name], info["inference_count"])
            errors.add_metric([name], info["error_count"])
            batches.add_metric([name], info["batch_count"])
            restarts.add_metric([name], info["restarts"])
            queue_depth.add_metric([name], info["queue_depth"])
            ready.add_metric([name], 1.0 if info["ready"] else 0.0)
            for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                quantiles.add_metric([name, q], info["latency_ms"][key] / 1000.0)
            dist = {int(k): v for k, v in info["batch_size_distribution"].items()}
            buckets = [(str(b), sum(n for size, n in dist.items() if size <= b)) for b in _BATCH_BUCKETS]
            buckets.append(("+Inf", sum(dist.values())))
            batch_size.add_metric([name], buckets, sum_value=sum(size * n for size, n in dist.items()))
        yield from (inferences, errors, batches, restarts, queue_depth, ready, quantiles, batch_size)
