"""The Open Inference Protocol v2 over HTTP (the REST API of KServe and Triton), Prometheus
metrics and a live status page, for one or more :class:`~pt2interp.serve.Server` objects.

>>> from fastapi.testclient import TestClient
>>> from pt2interp.serve import Server
>>> server = Server("fixtures/zoo/mlp.pt2", name="doc-http")
>>> client = TestClient(create_app([server]))
>>> client.post("/v2/models/doc-http/infer", json={"inputs": [
...     {"name": "x", "shape": [4, 16], "datatype": "FP32", "data": [0.0] * 64}
... ]}).json()["outputs"][0]["shape"]
[4, 8]
>>> server.shutdown()

Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models``,
``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``
(each model route also under ``/v2/models/{name}/versions/1/...``), ``GET /v2/status`` (what
the status page shows, as JSON), ``GET /metrics`` and ``GET /`` (the status page). Infer
requests speak JSON or Triton's binary tensor data extension (see :mod:`.oip`).

Every error is JSON, ``{"error": "..."}``, with a status naming its kind:

* 400 the request is wrong (the message names the field), 404 unknown model or version,
  408 the body did not arrive within ``body_timeout_s``, 413 the body is over
  ``max_body_bytes``; health and ready checks answer 400 while not ready, as the spec asks
  (a 4xx);
* 429 the model holds ``max_queued_rows`` rows already, 503 its requests hold
  ``max_inflight_bytes`` of bodies already, or the server is shut down or restarting its
  worker: each with ``Retry-After``;
* 504 no answer within ``request_timeout_s`` (the request is withdrawn: it costs no more model
  time), 500 the model failed (the message says how, without the server's file paths).

A client that goes away before its answer is not left running either: its request is
withdrawn, and counted as status 499 (nginx's "client closed request"). Large bodies are
decoded, and large answers encoded, in a worker thread, so health checks and small requests
are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import pt2interp
from pt2interp.errors import InputMismatchError, Pt2Error
from pt2interp.serve.metrics import HttpMetrics
from pt2interp.serve.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    RequestError,
    decode_request,
    dumps,
    encode_response,
    failure_answer,
    shown_name,
)
from pt2interp.serve.oip import public_message as _public
from pt2interp.serve.server import (
    DEFAULT_MAX_QUEUED_ROWS,
    RequestCancelledError,
    RequestTimeoutError,
    Server,
    ServerBusyError,
    ServerClosedError,
)

log = logging.getLogger("pt2interp.serve")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0
# Bodies and answers above these sizes are decoded / encoded in a worker thread: a 100,000-row
# answer takes a second to encode, and the event loop must keep answering meanwhile.
_DECODE_IN_THREAD_BYTES = 256 * 1024
_ENCODE_IN_THREAD_VALUES = 32 * 1024
_RETRY_AFTER = {"retry-after": "1"}
_CLOSE = {"connection": "close"}
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on what one model's infer requests may hold (see the module docstring)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    request_timeout_s: float | None = None  # None: each server's own request_timeout_s
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS


class _ClientGone(Exception):
    """The client closed the connection before its answer (``counted``: by the server, which had
    taken the request)."""

    def __init__(self, counted: bool = False):
        super().__init__()
        self.counted = counted


class _Answered(RequestError):
    """An error answer for a request the server took (and counted) itself."""


class _Gone(Exception):
    """Set on a request's waiter when its client disconnects."""


class _Expired(Exception):
    """Set on a request's waiter when its deadline passes."""


class _LoopInbox:
    """Answers handed from worker threads to one event loop. Waking a loop from another thread
    costs a system call (and the loop a turn); a worker answering a run of 16 requests wakes
    the loop once, and the loop then sets all 16 waiters."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = weakref.ref(loop)  # the app's table of inboxes must not keep old loops alive
        self.items: collections.deque = collections.deque()
        self.wake_pending = False

    def post(self, waiter: asyncio.Future, result: Any, error: BaseException | None) -> None:
        """From any thread: hand ``result`` (or ``error``) to ``waiter``."""
        self.items.append((waiter, result, error))
        # drain() clears the flag before it empties the deque: an item appended after it has
        # looked finds the flag clear and schedules another drain; none is left behind.
        if not self.wake_pending:
            self.wake_pending = True
            loop = self.loop()
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        self.wake_pending = False
        items = self.items
        while items:
            waiter, result, error = items.popleft()
            if not waiter.done():
                if error is None:
                    waiter.set_result(result)
                else:
                    waiter.set_exception(error)


def create_app(
    servers: Server | Iterable[Server] | Mapping[str, Server],
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    request_timeout_s: float | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS,
) -> OipApp:
    """An ASGI app serving ``servers`` (by their names, or the mapping's keys), for uvicorn or
    any ASGI server.

    ``max_body_bytes`` bounds an infer request's body (413); ``body_timeout_s`` how long its
    arrival may take (408); ``request_timeout_s`` (default: each server's own) the wait for its
    answer (504); ``max_inflight_bytes`` and ``max_queued_rows`` the bodies and rows one model's
    unanswered requests may hold (503 and 429, with ``Retry-After``; a request arriving while
    its model holds nothing is always taken). Prometheus metrics go to a registry of this app's
    own, so several apps can live in one process. The app does not shut the servers down:
    their owner does.
    """
    if isinstance(servers, Server):
        servers = [servers]
    models: dict[str, Server] = (
        dict(servers) if isinstance(servers, Mapping) else {s.name: s for s in servers}
    )
    limits = HttpLimits(
        max_body_bytes, body_timeout_s, request_timeout_s, max_inflight_bytes, max_queued_rows
    )
    metrics = HttpMetrics(models)
    for server in models.values():
        server.attach_front_end()
    return OipApp(models, _routes(models, metrics), limits, metrics)


class OipApp:
    """The ASGI app :func:`create_app` returns. Infer requests, the hot path, are handled here
    on the bare ASGI interface (body reading with a deadline, disconnects, back-pressure, binary
    data); every other route is FastAPI's (:attr:`api`)."""

    def __init__(
        self, models: dict[str, Server], api: FastAPI, limits: HttpLimits, metrics: HttpMetrics
    ):
        self.models = models
        self.api = api
        self.limits = limits
        self.metrics = metrics
        self.state = api.state
        self._inflight_bytes = metrics.inflight_bytes  # touched by the event loop only: no lock
        self._inflight_rows = metrics.inflight_rows
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopInbox] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.fullmatch(scope["path"])
            if match:
                await self._infer(scope, receive, send, match.group(1), match.group(2))
                return
        await self.api(scope, receive, send)

    # -- one infer request -------------------------------------------------------------------------
    async def _infer(self, scope, receive, send, name: str, version: str | None) -> None:
        started = time.perf_counter()
        held = [0, 0]  # body bytes and rows this request counts against its model
        error = None
        try:
            try:
                status, body, headers = await self._answer(scope, receive, name, version, held)
            except RequestError as exc:
                status, error, headers = exc.status, str(exc), exc.headers
                body = dumps({"error": error})
            except _ClientGone:
                status, body, headers, error = 499, None, {}, "the client went away"
            except asyncio.CancelledError:
                # The ASGI server's graceful shutdown ran out of time: say so, if anyone listens
                # (and if no answer had begun: the cancellation may land anywhere).
                error = "the server is shutting down"
                with contextlib.suppress(Exception):
                    await _send(send, 503, dumps({"error": error}), _RETRY_AFTER | _CLOSE)
                self.metrics.observe(name, 503, time.perf_counter() - started, error)
                raise
            except Exception:
                log.exception("infer request for model %s failed in the server", shown_name(name))
                status, error, headers = (
                    500,
                    "internal server error (the server's log has the details)",
                    {},
                )
                body = dumps({"error": error})
            if body is not None:
                await _send(send, status, body, headers)
            self.metrics.observe(name, status, time.perf_counter() - started, error)
        finally:
            if held[0] or held[1]:
                self._inflight_bytes[name] -= held[0]
                self._inflight_rows[name] -= held[1]

    async def _answer(
        self,
        scope,
        receive,
        name: str,
        version: str | None,
        held: list[int],
    ) -> tuple[int, bytes, dict[str, str]]:
        server = _lookup(self.models, name, version)
        server.announce(1)
        announced = [True]
        try:
            return await self._run(server, scope, receive, name, held, announced)
        except _Answered:
            raise  # the server counted it already
        except RequestError as exc:
            server.report_rejected(
                ServerBusyError(str(exc))
                if exc.status in (429, 503)
                else InputMismatchError(str(exc))
            )
            raise
        except _ClientGone as exc:
            if not exc.counted:
                server.report_rejected(
                    RequestCancelledError("the client went away before sending its request")
                )
            raise
        finally:
            if announced[0]:
                server.announce(-1)

    async def _run(
        self,
        server: Server,
        scope,
        receive,
        name: str,
        held: list[int],
        announced: list[bool],
    ) -> tuple[int, bytes, dict[str, str]]:
        limits = self.limits
        headers = dict(scope["headers"])
        declared = _int_header(headers, b"content-length")
        if declared is not None and declared > limits.max_body_bytes:
            raise RequestError(
                413,
                f"request body of {declared} bytes is over the limit of "
                f"{limits.max_body_bytes} bytes",
                _CLOSE,
            )
        if declared:
            self._hold_bytes(name, declared, held)
        body = await self._read_body(receive, name, held, counted=declared is not None)
        header_length = _int_header(headers, HEADER_LENGTH.encode())
        layout = server.layout
        if len(body) > _DECODE_IN_THREAD_BYTES:
            request = await asyncio.to_thread(decode_request, body, layout, header_length)
        else:
            request = decode_request(body, layout, header_length)
        del body
        rows = self._inflight_rows[name]
        if rows and rows + request.rows > limits.max_queued_rows:
            raise RequestError(
                429,
                f"model {name!r} has {rows} rows waiting (at most {limits.max_queued_rows}); "
                f"retry later",
                _RETRY_AFTER,
            )
        self._inflight_rows[name] = rows + request.rows
        held[1] = request.rows

        timeout = (
            limits.request_timeout_s
            if limits.request_timeout_s is not None
            else server.request_timeout_s
        )
        leaves = await self._wait(server, request, receive, timeout, announced)
        layout = server.layout  # the worker may have reloaded the model meanwhile
        try:
            values = sum(v.numel() for v in leaves if isinstance(v, torch.Tensor))
            if values > _ENCODE_IN_THREAD_VALUES:
                body, answer_headers = await asyncio.to_thread(
                    encode_response, None, layout, request, name, leaves=leaves
                )
            else:
                body, answer_headers = encode_response(None, layout, request, name, leaves=leaves)
        except RequestError as exc:  # the server counted it as answered: no second count
            raise _Answered(exc.status, str(exc), exc.headers) from None
        except Exception as exc:  # noqa: BLE001 - outputs that do not fit the recorded layout
            raise _Answered(
                500,
                _public(
                    f"model {name!r}: its outputs could not be encoded: {type(exc).__name__}: {exc}"
                ),
            ) from None
        return 200, body, answer_headers

    async def _wait(self, server: Server, request, receive, timeout: float, announced: list[bool]):
        """Submit the request and wait for its result; withdrawn from the server if the client
        goes away or the deadline passes first, so that it costs no further model time."""
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _LoopInbox(loop)
        waiter = loop.create_future()
        # No longer on its way before it is queued: a worker that finds it alone must not wait
        # for it to arrive.
        server.announce(-1)
        announced[0] = False
        handle = server.submit_leaves(
            request.leaves, lambda result, error: inbox.post(waiter, result, error)
        )
        # Only a disconnect can come from the client now: the body is read.
        gone = loop.create_task(_disconnect(receive))
        gone.add_done_callback(functools.partial(_on_disconnect, waiter))
        timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_exception(_Expired()))
        try:
            return await waiter
        except _Gone:
            server.withdraw(handle, RequestCancelledError("the client went away"))
            raise _ClientGone(counted=True) from None
        except _Expired:
            server.withdraw(
                handle,
                RequestTimeoutError(f"server {server.name!r}: no answer within {timeout:g} s"),
            )
            raise _Answered(504, f"model {server.name!r}: no answer within {timeout:g} s") from None
        except asyncio.CancelledError:
            server.withdraw(handle, ServerClosedError(f"server {server.name!r} is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - every failure has its answer
            answer = failure_answer(server.name, exc)
            raise _Answered(answer.status, str(answer), answer.headers) from None
        finally:
            timer.cancel()
            gone.cancel()

    async def _read_body(self, receive, name: str, held: list[int], counted: bool) -> bytes:
        limits = self.limits
        parts: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        raise RequestError(
                            413,
                            f"request body is over the limit of {limits.max_body_bytes} bytes",
                            _CLOSE,
                        )
                    if not counted:  # chunked: no size up front, so count as it comes
                        self._hold_bytes(name, len(chunk), held)
                    parts.append(chunk)
                if not message.get("more_body", False):
                    return

        try:
            await _within(limits.body_timeout_s, read())
        except (TimeoutError, asyncio.TimeoutError):
            raise RequestError(
                408,
                f"the request body did not arrive within {limits.body_timeout_s:g} s "
                f"({size} bytes came)",
                _CLOSE,
            ) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _hold_bytes(self, name: str, size: int, held: list[int]) -> None:
        inflight = self._inflight_bytes[name]
        if inflight and inflight + size > self.limits.max_inflight_bytes:
            raise RequestError(
                503,
                f"model {name!r} holds {inflight} bytes of requests (at most "
                f"{self.limits.max_inflight_bytes}); retry later",
                _RETRY_AFTER | _CLOSE,
            )
        self._inflight_bytes[name] = inflight + size
        held[0] += size


def _routes(models: dict[str, Server], metrics: HttpMetrics) -> FastAPI:
    """Every route but infer: health, metadata, status, metrics, the status page."""
    app = FastAPI(
        title="pt2interp",
        version=pt2interp.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.servers = models
    app.state.metrics_registry = metrics.registry
    status_page = (
        files("pt2interp.serve").joinpath("static/status.html").read_text(encoding="utf-8")
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return _json({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return _json({"error": "internal server error (the server's log has the details)"}, 500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(status_page)

    @app.get("/v2")
    async def server_metadata():
        return _json(
            {"name": "pt2interp", "version": pt2interp.__version__, "extensions": EXTENSIONS}
        )

    @app.get("/v2/health/live")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        ok = bool(models) and all(s.ready for s in models.values())
        return _json({"ready": ok}, 200 if ok else 400)

    @app.get("/v2/models")
    async def model_index():
        return _json({"models": [{"name": n, "ready": s.ready} for n, s in models.items()]})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        try:
            meta = _lookup(models, name, version).metadata()
        except RequestError as exc:
            return _json({"error": str(exc)}, exc.status)
        meta["name"] = name
        return _json(meta)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        try:
            ok = _lookup(models, name, version).ready
        except RequestError as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json({"name": name, "ready": ok}, 200 if ok else 400)

    @app.get("/v2/status")
    async def status():
        return _json(
            {
                "time": time.time(),
                "version": pt2interp.__version__,
                "models": [_model_status(n, s, metrics) for n, s in models.items()],
            }
        )

    @app.get("/v2/models/{name}/graph", response_class=HTMLResponse)
    async def model_graph(name: str):
        """The model's graph as the interactive page of ``pt2interp graph``."""
        try:
            server = _lookup(models, name, None)
            page = await asyncio.to_thread(_graph_page, server.path, server.model_name)
        except RequestError as exc:
            return _json({"error": str(exc)}, exc.status)
        except Pt2Error as exc:
            return _json({"error": f"model {name!r}: cannot draw its graph: {exc}"}, 500)
        return HTMLResponse(page, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _lookup(models: Mapping[str, Server], name: str, version: str | None) -> Server:
    """The server for a route's model name and version; a 404 naming the ones there are."""
    if version is not None and version != "1":
        raise RequestError(
            404, f"unknown model version {shown_name(version)} (only version 1 exists)"
        )
    server = models.get(name)
    if server is None:
        raise RequestError(
            404, f"unknown model {shown_name(name)} (models: {', '.join(sorted(models)) or 'none'})"
        )
    return server


def _model_status(name: str, server: Server, metrics: HttpMetrics) -> dict[str, Any]:
    info = server.info()
    info["path"] = Path(info["path"]).name  # the file, not where this server keeps it
    if info["last_error"]:
        info["last_error"] = _public(info["last_error"])
    return {
        "name": name,
        "info": info,
        "metadata": server.metadata(),
        "http": metrics.snapshot(name),
    }


async def _send(send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    if "content-type" not in headers:
        raw.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _int_header(headers: dict[bytes, bytes], key: bytes) -> int | None:
    value = headers.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise RequestError(
            400, f"header {key.decode()} is not a non-negative integer: {value[:40]!r}"
        )
    return number


def _on_disconnect(waiter: asyncio.Future, task: asyncio.Task) -> None:
    if task.cancelled():
        return  # the answer came first
    task.exception()  # retrieved, so asyncio does not log it; a failed receive counts as gone
    if not waiter.done():
        waiter.set_exception(_Gone())


async def _disconnect(receive) -> None:
    """Returns once the client has disconnected."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(content: Any, status: int = 200) -> Response:
    return Response(dumps(content), status_code=status, media_type="application/json")


if hasattr(asyncio, "timeout"):

    async def _within(seconds: float, awaitable):
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # Python 3.10

    async def _within(seconds: float, awaitable):
        return await asyncio.wait_for(awaitable, seconds)


@functools.lru_cache(maxsize=16)
def _graph_page_cached(path: str, model: str | None, mtime_ns: int, size: int) -> str:
    from pt2interp.graphview import html_document

    return html_document(path, model=model)


def _graph_page(path, model: str | None) -> str:
    # keyed by the file's identity too: a model reloaded from a new file gets a new page
    st = os.stat(path)
    return _graph_page_cached(str(path), model, st.st_mtime_ns, st.st_size)
