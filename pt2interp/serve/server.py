"""An in-process model server: one worker thread per model, a request queue, dynamic batching,
telemetry, a process-wide registry, and a worker that comes back when it dies.

>>> import torch
>>> from pt2interp.serve import Server, get_server
>>> with Server("fixtures/zoo/dynamic_batch_mlp.pt2", name="doc-mlp", batch_size=8) as server:
...     y = server.predict(torch.zeros(3, 16))            # from any thread
...     tuple(y.shape), get_server("doc-mlp") is server, server.info()["inference_count"]
((3, 8), True, 1)

Design, in short:

* The worker thread owns the :class:`~pt2interp.loaded.LoadedProgram`: only it runs the model,
  so the program needs no locks and torch's intra-op threads do the parallel math.
* Callers validate their own inputs (in their own threads, so a malformed request never reaches
  the worker and never shares a run), enqueue them and wait, with a timeout, on a lock
  released once they are answered (:meth:`Server.submit` hands out a ``Future`` instead). How
  requests reach the worker and answers their callers is :mod:`pt2interp.serve.handoff`.
* With ``batch_size > 1`` the worker takes the first request, then keeps taking requests until
  one group of compatible requests (same non-batch shapes, dtypes and shared inputs) holds
  ``batch_size`` rows or the first request has waited ``batch_timeout_ms``; each group runs
  stacked along the batch dimension and the outputs are split back (see
  :mod:`pt2interp.serve.batching`). If a combined run fails, its requests run one by one, so an
  error reaches only the request that caused it.
* An exception from running a request fails that request. Anything that escapes the worker's
  own loop kills the worker: the requests it held fail with :class:`WorkerCrashedError`, a
  ``restart`` event is emitted, and a new worker reloads the model from disk and carries on with
  the queue.
* :meth:`Server.shutdown` runs what is queued (``drain=True``) or fails it with
  :class:`ServerClosedError`; either way every caller gets an answer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pt2interp.errors import Pt2Error
from pt2interp.serve.batching import (
    BatchLayout,
    Chunk,
    PreparedRequest,
    capture_buckets,
    chunk_request,
    plan_runs,
)
from pt2interp.serve.cpus import ThreadChooser
from pt2interp.serve.handoff import make_handoff
from pt2interp.serve.stats import EventBus, ServeEvent, ServerStats, error_kind

log = logging.getLogger("pt2interp.serve")


class ServeError(Pt2Error):
    """Base class of errors about serving rather than about the request's inputs."""


class ServerClosedError(ServeError):
    """The server was shut down before (or while) the request could run."""


class WorkerCrashedError(ServeError):
    """The worker died while holding this request; a new worker has taken over."""


class ModelUnavailableError(ServeError):
    """The model could not be reloaded after a worker crash; the server keeps retrying."""


class RequestTimeoutError(ServeError, TimeoutError):
    """No answer within the server's ``request_timeout_s``."""


class RequestCancelledError(ServeError):
    """The caller gave up on the request (cancelled its future, or went away) before it was
    answered: it was dropped from the queue, or stopped at its next run."""


# Rows one model's unanswered requests may hold before a front end (REST, gRPC) answers busy.
DEFAULT_MAX_QUEUED_ROWS = 65_536


class ServerBusyError(ServeError):
    """The server holds as much work as it may: try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServeFuture(concurrent.futures.Future):
    """The future :meth:`Server.submit` returns. ``cancel()`` withdraws a request that has not
    run yet (``cancelled()`` is then True) and stops one that is running at its next model run
    (a request split into several runs): that one fails with :class:`RequestCancelledError`
    and ``cancel()`` returns False, as for any future already running."""

    def __init__(self):
        super().__init__()
        self._stop: tuple[Server, _Request] | None = None

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self._stop is not None:
            self._stop[0].withdraw(self)
        return False


# -- the registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, Server] = {}
_REGISTRY_LOCK = threading.Lock()


def get_server(name: str) -> Server:
    """The running server registered under ``name``, from anywhere in the process.

    Raises ``LookupError`` naming the servers that exist.
    """
    with _REGISTRY_LOCK:
        server = _REGISTRY.get(name)
        if server is None:
            raise LookupError(f"no server named {name!r} (running: {sorted(_REGISTRY) or 'none'})")
        return server


def list_servers() -> dict[str, Server]:
    """Every registered server, by name (a copy: safe to iterate while servers come and go)."""
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


_request_ids = itertools.count(1)


class _Request:
    """One ``predict`` call on its way through the queue.

    A request is answered exactly once (:meth:`Server._complete` wins ``claim``) and its caller
    wakes when ``done``, held from birth, is released: two bare locks, the cheapest hand-off
    between threads CPython has. A :class:`concurrent.futures.Future` is made only for
    :meth:`Server.submit`, whose callers ask for one.

    ``has_turn`` and ``abandoned`` belong to the wake line
    (:class:`pt2interp.serve.handoff.WakeLine`): this caller must wake the next; this caller
    gave up waiting (a timeout), so whoever wakes it wakes the next in its place.
    """

    __slots__ = (
        "abandoned",
        "callback",
        "checked_by",
        "claim",
        "compute_s",
        "done",
        "enqueued",
        "error",
        "failed",
        "first_run",
        "future",
        "has_turn",
        "id",
        "largest_run",
        "leaf_answer",
        "leaves",
        "pieces",
        "prepared",
        "remaining",
        "result",
        "rows",
        "running",
    )

    def __init__(
        self,
        future: concurrent.futures.Future | None = None,
        callback: Callable[[Any, BaseException | None], None] | None = None,
    ):
        self.id = next(_request_ids)
        self.future = future
        self.callback = callback
        self.enqueued = time.monotonic()
        self.claim = threading.Lock()
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.running = False
        self.leaves: list[Any] = []  # input leaves, in the signature's order
        # the CallSignature whose full check the leaves passed (None: the program checks them)
        self.checked_by: Any = None
        self.leaf_answer = False  # answer with output leaves instead of the model's structure
        self.prepared: PreparedRequest | None = None
        self.rows = 1
        self.pieces: list[Any] = []
        self.remaining = 0
        self.largest_run = 0
        self.failed = False
        self.has_turn = False
        self.abandoned = False
        self.first_run: float | None = None  # monotonic start of its first model run
        self.compute_s = 0.0  # time in the model runs that served it

    @property
    def finished(self) -> bool:
        return self.claim.locked()


def _group_key(request: _Request) -> Any:
    return (
        request.prepared.group_key if request.prepared is not None else ("unprepared", request.id)
    )


class Server:
    """Serve one ``.pt2`` in this process.

    ``name`` (default: the file's stem) registers the server for :func:`get_server`; ``device``
    is where the model runs; ``batch_size`` is the most rows (samples along the batch dimension)
    one model run may hold, 1 meaning no batching; ``batch_timeout_ms`` is how long the first
    request of a batch may wait for company; ``request_timeout_s`` bounds every ``predict``.
    ``model`` picks one model of a multi-model archive. ``threads`` is how many torch threads a
    model run uses: None keeps the process's setting, ``"auto"`` follows the CPUs other
    processes leave free (see :mod:`pt2interp.serve.cpus`), a number fixes it.
    ``cuda_graphs=True`` (on a CUDA device) runs the model as CUDA graphs, captured at start-up
    for each run size: with batching 1, 2, 4, ... up to ``batch_size`` rows, a run padded up to
    the next size (see :meth:`pt2interp.loaded.LoadedProgram.capture`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 1,
        batch_timeout_ms: float = 0,
        *,
        request_timeout_s: float = 60.0,
        model: str | None = None,
        threads: int | str | None = None,
        cuda_graphs: bool = False,
    ):
        if not (
            threads is None or threads == "auto" or (isinstance(threads, int) and threads >= 1)
        ):
            raise ValueError(f"threads must be a positive integer, 'auto' or None, got {threads!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must not be negative, got {batch_timeout_ms}")
        self.path = Path(path)
        self.name = name or self.path.stem
        self.batch_size = int(batch_size)
        self.batch_timeout_ms = float(batch_timeout_ms)
        self.request_timeout_s = float(request_timeout_s)
        self._model_name = model
        self.cuda_graphs = cuda_graphs
        self.threads = threads
        self._threads_now: int | None = None
        self._requested_device = device
        self._bus = EventBus()
        self._stats = ServerStats()
        # how requests reach the worker and answers their callers (PT2INTERP_HANDOFF picks)
        self._queue, self._wakeup = make_handoff()
        self._closed = False
        self._abort = False  # shutdown(drain=False): fail instead of run
        self._closed_event = threading.Event()  # wakes a worker waiting to reload
        self._inflight: list[_Request] = []
        # Runs still to make for requests split into several (see _run_round): one per round, so
        # that a large request shares the worker with those that come after it.
        self._backlog: collections.deque[list[Chunk]] = collections.deque()
        self._answered: list[_Request] | None = None  # the worker's round: callers to wake
        # Requests an HTTP front end is reading, on their way to submit() (see announce()).
        self._front_ends = 0
        self._arriving = 0
        self._arrival_lock = threading.Lock()
        self._worker_thread_id: int | None = None
        self._reloads = 0
        self._consecutive_crashes = 0
        self._ready = False
        self._load()  # errors in the archive surface here, at once
        with _REGISTRY_LOCK:
            if self.name in _REGISTRY:
                raise ValueError(
                    f"a server named {self.name!r} is already running; pass name=... "
                    f"or shut that one down first"
                )
            _REGISTRY[self.name] = self
        self._worker = self._start_worker(generation=0)

    # -- loading -------------------------------------------------------------------------------
    def _load(self) -> None:
        from pt2interp.api import load

        program = load(
            self.path,
            device=self._requested_device,
            model=self._model_name,
            cuda_graphs=self.cuda_graphs,
        )
        layout = BatchLayout.from_program(program.program.model, program.signature)
        self.device = program.device
        self._program = program
        self._layout = layout
        limit = layout.rows_per_run_limit
        self._rows_per_run = min(self.batch_size, limit) if limit else self.batch_size
        # A request larger than a batch runs on its own, whole, as it would without batching;
        # only one larger than the program takes is split, into runs as large as it takes.
        self._split_rows = max(limit, self._rows_per_run) if limit else None
        self._batching = self.batch_size > 1 and layout.batchable
        if self.batch_size > 1 and not layout.batchable:
            log.warning("server %r: batching off: %s", self.name, layout.reason)
        if program.cuda_graphs_info().get("graphs") is not None:
            self._capture_runs(program, layout)
        self._ready = True

    def _capture_runs(self, program, layout: BatchLayout) -> None:
        """Capture a CUDA graph for every run size before serving, so no request waits for a
        capture: with batching one per bucket (1, 2, 4, ... rows), runs padded up to the next;
        without, the inputs' example sizes (other sizes capture on first use)."""
        if self._batching and layout.static_rows is None:
            buckets = capture_buckets(self._rows_per_run)
            layout.buckets = tuple(b for b in buckets if b >= layout.min_rows)
            sizes: list[int | None] = list(layout.buckets)
        else:
            sizes = [None]
        for rows in sizes:
            try:
                program.capture_leaves(layout.example_leaves(rows, program.device))
            except (Pt2Error, RuntimeError) as exc:  # serve on: that size captures when it runs
                log.warning(
                    "server %r: could not capture the graph for %s rows ahead (%s)",
                    self.name,
                    rows if rows is not None else "the example's",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                )

    @property
    def program(self):
        """The :class:`~pt2interp.loaded.LoadedProgram` the worker runs now (replaced on reload)."""
        return self._program

    @property
    def layout(self) -> BatchLayout:
        """Input and output names, types, shapes and batch dimension (see :mod:`.batching`)."""
        return self._layout

    @property
    def batching(self) -> bool:
        """True when requests are stacked into shared runs."""
        return self._batching

    @property
    def ready(self) -> bool:
        return self._ready and not self._closed

    # -- calling ---------------------------------------------------------------------------------
    def predict(self, *args, **kwargs):
        """Run the model on one request, from any thread; outputs in the model's own structure.

        Raises :class:`~pt2interp.errors.InputMismatchError` for inputs that do not fit (only this
        request fails), :class:`RequestTimeoutError` after ``request_timeout_s``,
        :class:`ServerClosedError` once shut down, or whatever the model raised.
        """
        request = self._submit(_Request(), args, kwargs)
        if not self._wakeup.wait(request, self.request_timeout_s):
            return self._give_up(request)
        return self._woken(request)

    def _woken(self, request: _Request):
        """The answer of a request whose caller has just been woken (and holds ``done``)."""
        self._wakeup.woken(request)  # first thing: a caller behind may wait on us
        if request.error is not None:
            raise request.error
        return request.result

    def _give_up(self, request: _Request):
        """``predict`` waited ``request_timeout_s`` in vain: withdraw the request (if it has not
        started) and raise, unless its answer arrived in the meantime."""
        error = RequestTimeoutError(
            f"server {self.name!r}: no answer within {self.request_timeout_s:g} s "
            f"({len(self._queue)} requests queued)"
        )
        if not request.running:
            self._finish(request, error=error)  # withdrawn: the worker skips it
        if not self._wakeup.abandon(request):
            raise error
        return self._woken(request)

    def submit(self, *args, **kwargs) -> ServeFuture:
        """Queue a request and return its future at once (``future.result(timeout)`` waits).

        Cancelling the future withdraws the request (see :class:`ServeFuture`); so does
        :meth:`withdraw`, with a reason. Input errors come back through the future as well.
        """
        future = ServeFuture()
        request = _Request(future)
        future._stop = (self, request)
        return self._submit(request, args, kwargs).future

    def submit_call(
        self, args: tuple, kwargs: dict, on_done: Callable[[Any, BaseException | None], None]
    ):
        """Queue a request and have ``on_done(result, error)`` called once it is answered, in the
        answering thread (the worker's, as a rule): it must be quick and must not raise. The
        low-level form of :meth:`submit` for front ends (no future, no lock per request);
        returns a handle for :meth:`withdraw`."""
        return self._submit(_Request(callback=on_done), args, kwargs)

    def submit_leaves(
        self, leaves: list[Any], on_done: Callable[[list[Any] | None, BaseException | None], None]
    ):
        """:meth:`submit_call` for a call already flat: ``leaves`` holds one value per input name
        (``layout.inputs``) and ``on_done`` receives the output leaves (one per
        ``layout.outputs``), never the model's structure. What the HTTP front end uses: a request
        stays in leaves from the wire to the program and back."""
        request = _Request(callback=on_done)
        request.leaf_answer = True
        return self._submit(request, (), {}, leaves)

    def withdraw(self, future: ServeFuture | Any, error: ServeError | None = None) -> bool:
        """Give up on a request from :meth:`submit`: it fails with ``error`` (default
        :class:`RequestCancelledError`) at once, is skipped when the worker reaches it, and, if
        split into several runs, makes no further run. False when it had been answered already.

        The HTTP layer calls this for clients that went away (``RequestCancelledError``) and for
        requests past their deadline (:class:`RequestTimeoutError`), so neither costs model time.
        """
        if isinstance(future, _Request):  # a handle from submit_call
            request = future
        else:
            server, request = future._stop
            if server is not self:
                raise ValueError(
                    f"that future belongs to server {server.name!r}, not {self.name!r}"
                )
        error = (
            error
            if error is not None
            else RequestCancelledError("the caller cancelled the request")
        )
        return self._finish(request, error=error)

    def attach_front_end(self) -> None:
        """Say that a front end (the HTTP app) will :meth:`announce` the requests it reads. From
        then on a batch waits ``batch_timeout_ms`` for company only while more requests are on
        their way or queued: a lone request runs at once instead of waiting for nobody."""
        with self._arrival_lock:
            self._front_ends += 1

    def announce(self, delta: int) -> None:
        """``+1``: a front end has begun reading a request; ``-1``: that request was submitted,
        or dropped before it could be."""
        with self._arrival_lock:
            self._arriving += delta

    def report_rejected(self, error: BaseException) -> None:
        """Count a request refused before it reached the server (a malformed HTTP body, say):
        it emits its ``start`` and ``exception`` events like any failed ``predict``."""
        request = _Request()
        self._started(request)
        self._finish(request, error=error)

    def _started(self, request: _Request) -> None:
        self._stats.started()
        if self._bus.subscribers:
            self._bus.emit(ServeEvent("start", self.name, request_id=request.id))

    def _submit(
        self, request: _Request, args: tuple, kwargs: dict, leaves: list[Any] | None = None
    ) -> _Request:
        """Queue a call given as ``(args, kwargs)`` or, with ``leaves``, already bound."""
        self._started(request)
        try:
            if self._closed:
                raise ServerClosedError(f"server {self.name!r} is shut down")
            layout = self._layout
            if self._batching:
                # checked but for the batch dim; the program checks each stacked run whole
                if leaves is None:
                    prepared = layout.prepare_plain(args, kwargs, self.device) or layout.prepare(
                        layout.bind(args, kwargs), self.device
                    )
                else:
                    prepared = layout.prepare_plain(leaves, {}, self.device) or layout.prepare(
                        leaves, self.device
                    )
                request.prepared = prepared
                request.rows = prepared.rows
                request.leaves = prepared.leaves
            else:
                # checked whole here, in the caller's thread: the worker only runs it
                signature = layout.signature
                if leaves is None:
                    leaves = signature.bind(args, kwargs)
                leaves = signature.check(signature.moved_to(leaves, self.device), self.device)
                request.leaves, request.checked_by = leaves, signature
                request.rows = layout.rows_of(leaves)
        except Exception as exc:  # noqa: BLE001 - any input problem belongs to this caller alone
            self._finish(request, error=exc)
            return request
        if not self._queue.put(request):
            self._finish(request, error=ServerClosedError(f"server {self.name!r} is shut down"))
        return request

    def _finish(
        self, request: _Request, result: Any = None, error: BaseException | None = None
    ) -> bool:
        """Answer one request (see :meth:`_complete`); False if it had been answered already."""
        return bool(self._complete([(request, result, error)]))

    def _answer(self, answers: list[tuple[_Request, Any]]) -> None:
        """Answer one run's requests with their results (see :meth:`_complete`)."""
        self._complete([(request, result, None) for request, result in answers])

    def _complete(self, outcomes: list[tuple[_Request, Any, BaseException | None]]) -> int:
        """Answer each request of ``(request, result, error)`` not answered yet (the one way a
        request is answered): set its future, count it and emit its ``stop`` or ``exception``
        event, then call its callback or wake its caller (after counting, so ``info()`` read
        after ``predict`` returns counts it). On the worker, within a round, callers are woken
        together when the round ends. Returns how many were answered here."""
        now = time.monotonic()  # one clock reading for all of them
        claimed: list[_Request] = []
        for request, result, error in outcomes:
            if not request.claim.acquire(blocking=False):
                continue  # answered already
            future = request.future
            if future is not None:
                try:
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(result)
                except concurrent.futures.InvalidStateError:
                    # The caller cancelled after we started. It gets no answer; count one anyway.
                    if error is None:
                        error = RequestCancelledError("the caller cancelled the request")
                        result = None
            request.result, request.error = result, error
            claimed.append(request)
        if not claimed:
            return 0
        answered = [r for r in claimed if r.error is None]
        if answered:
            ran = [r for r in answered if r.first_run is not None]
            self._stats.stopped_together(
                [now - r.enqueued for r in answered],
                now,
                [r.first_run - r.enqueued for r in ran],
                [r.compute_s for r in ran],
            )
        for request in claimed:
            error = request.error
            if error is not None:
                self._stats.failed(error, error_kind(error))
        if self._bus.subscribers:
            for request in claimed:
                self._bus.emit(self._end_event(request, now - request.enqueued))
        wake_later = self._answered  # the worker's round, if this is the worker in one
        if wake_later is not None and threading.get_ident() != self._worker_thread_id:
            wake_later = None
        for request in claimed:
            if request.callback is not None:
                request.callback(request.result, request.error)
            elif wake_later is not None and request.future is None:
                wake_later.append(request)  # woken in turn when the round ends
            else:
                self._wakeup.wake(request)
        return len(claimed)

    def _end_event(self, request: _Request, duration: float) -> ServeEvent:
        """The ``stop`` or ``exception`` event of an answered request."""
        error = request.error
        if error is None:
            return ServeEvent(
                "stop",
                self.name,
                request_id=request.id,
                duration_s=duration,
                batch_size=request.largest_run or request.rows,
                input_count=request.rows,
            )
        return ServeEvent(
            "exception",
            self.name,
            request_id=request.id,
            duration_s=duration,
            input_count=request.rows,
            error=error,
            error_kind=error_kind(error),
        )

    # -- telemetry ---------------------------------------------------------------------------------
    def on_event(self, fn: Callable[[ServeEvent], None]) -> Callable[[], None]:
        """Call ``fn(event)`` for every :class:`~pt2interp.serve.stats.ServeEvent`; returns an
        unsubscribe function. ``fn`` runs in the thread that emits (a caller's or the worker's):
        keep it quick and thread-safe.

        >>> events = []
        >>> with Server("fixtures/zoo/mlp.pt2", name="doc-events") as s:
        ...     stop_listening = s.on_event(events.append)
        ...     _ = s.predict(torch.zeros(4, 16))
        >>> [e.kind for e in events]
        ['start', 'batch', 'stop']
        """
        return self._bus.subscribe(fn)

    @property
    def model_name(self) -> str | None:
        """Which model of the archive this server runs (None: the archive's only one)."""
        return self._model_name

    def info(self) -> dict[str, Any]:
        """Path, name, device, counts, mean batch size, uptime, latency percentiles and more.

        Keys: ``name``, ``path``, ``device``, ``ready``, ``batch_size``, ``batch_timeout_ms``,
        ``threads``, ``batching``, ``batching_note``, ``rows_per_run``, ``queue_depth``,
        ``cuda_graphs`` (with ``cuda_graphs=True``: the plan's verdict and the graphs held,
        captured and replayed), ``run_sizes`` (the padded run sizes graphs were captured for),
        ``inference_count``, ``error_count``, ``request_count``, ``batch_count``,
        ``mean_batch_size``, ``batch_size_distribution`` (rows per run -> runs), ``padded_rows``,
        ``restarts``, ``reloads``, ``last_error``, ``uptime_s``, ``throughput_rps`` (over the last
        10 s), ``latency_ms`` (``p50``/``p95``/``p99`` over the last 10,000 successful requests).
        """
        layout = self._layout
        note = None
        if self.batch_size > 1 and not layout.batchable:
            note = f"batching off: {layout.reason}"
        elif layout.static_rows is not None and self._batching:
            note = f"static batch of {layout.static_rows} rows: short runs are padded"
        info = {
            "name": self.name,
            "path": str(self.path),
            "device": str(self.device),
            "ready": self.ready,
            "batch_size": self.batch_size,
            "batch_timeout_ms": self.batch_timeout_ms,
            "threads": self._threads_now,
            "batching": self._batching,
            "batching_note": note,
            "rows_per_run": self._rows_per_run if self._batching else None,
            "queue_depth": len(self._queue),
            "reloads": self._reloads,
            "cuda_graphs": self._program.cuda_graphs_info() if self.cuda_graphs else None,
            "run_sizes": list(layout.buckets) or None,
        }
        info.update(self._stats.snapshot())
        return info

    def metadata(self) -> dict[str, Any]:
        """The model as the Open Inference Protocol describes it: name, platform, inputs and
        outputs with ``datatype`` (``FP32``, ``INT64``, ...) and ``shape`` (-1 where dynamic, and
        along the batch dimension while batching, which pads and splits to fit any row count)."""
        layout = self._layout
        described = layout.describe()
        if self._batching:
            # Batching takes any number of rows (padding or splitting as needed): say so.
            for entry, slot in zip(
                described["inputs"], [s for s in layout.inputs if s.kind in ("tensor", "int")]
            ):
                if slot.batch_axis is not None:
                    entry["shape"][slot.batch_axis] = -1
            for entry, slot in zip(described["outputs"], layout.outputs):
                if slot.batch_axis is not None:
                    entry["shape"][slot.batch_axis] = -1
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "pt2interp",
            "inputs": described["inputs"],
            "outputs": described["outputs"],
            "device": str(self.device),
            "batching": described["batching"],
        }

    # -- the worker --------------------------------------------------------------------------------
    def _start_worker(self, generation: int, delay: float = 0.0) -> threading.Thread:
        thread = threading.Thread(
            target=self._worker_main,
            args=(generation, delay),
            daemon=True,
            name=f"pt2interp-serve-{self.name}-{generation}",
        )
        self._worker = thread
        thread.start()
        return thread

    def _worker_main(self, generation: int, delay: float) -> None:
        # OpenMP keeps its thread count per thread: a new thread starts from the default (every
        # core) whatever torch.set_num_threads said in the main thread, and oversubscribed
        # BLAS threads spin; restate the process's setting here, where the model runs.
        chooser = ThreadChooser() if self.threads == "auto" else None
        threads = (
            self.threads
            if isinstance(self.threads, int)
            else chooser.threads_for(0.0)
            if chooser
            else torch.get_num_threads()
        )
        torch.set_num_threads(threads)
        self._threads_now = threads
        self._worker_thread_id = threading.get_ident()
        try:
            if generation > 0 and not self._reload_until_ready(delay):
                return
            most = self._rows_per_run if self._batching else 1  # one full run of one-row requests
            queue, backlog = self._queue, self._backlog
            while True:
                if chooser is not None:
                    wanted = chooser.update()
                    if wanted and wanted != self._threads_now:
                        torch.set_num_threads(wanted)
                        self._threads_now = wanted
                if backlog:  # a split request has runs to go: take newcomers, never wait for them
                    batch = queue.take(1, deadline=0.0, most=most)
                else:
                    batch = queue.take(1, most=most)
                    if not batch:
                        return  # closed, and everything queued before has been answered
                if batch and self._batching and self._company_coming():
                    self._fill(batch, most)
                self._inflight = batch
                self._answered = answered = []
                try:
                    if batch:
                        self._run_round(batch)
                    if backlog:
                        self._run_chunks(backlog.popleft())
                finally:  # the worker may be dying: its callers are woken all the same
                    self._answered = None
                    self._wakeup.wake_in_turn(answered)
                self._inflight = []
                self._consecutive_crashes = 0
        except BaseException as exc:  # noqa: BLE001 - the worker's death, whatever killed it
            self._on_worker_death(exc, generation)

    def _fill(self, batch: list[_Request], most: int) -> None:
        """Take more requests into ``batch`` until a group of compatible ones holds a full run
        or the first request has waited ``batch_timeout_ms`` (what is already queued is taken
        even after that: it costs no waiting)."""
        cap = self._rows_per_run
        deadline = batch[0].enqueued + self.batch_timeout_ms / 1000.0
        group_rows: dict[Any, int] = {}
        for request in batch:
            key = _group_key(request)
            group_rows[key] = group_rows.get(key, 0) + request.rows
        fullest = max(group_rows.values())
        while fullest < cap and len(batch) < most:
            deadline_now = deadline if self._company_coming() else 0.0  # take what is there and run
            more = self._queue.take(cap - fullest, deadline=deadline_now, most=most - len(batch))
            if not more:
                return
            for request in more:
                key = _group_key(request)
                group_rows[key] = group_rows.get(key, 0) + request.rows
            batch += more
            fullest = max(group_rows.values())

    def _company_coming(self) -> bool:
        """Whether a batch may get company by waiting: requests are queued or on their way (as
        a front end announces them), or no front end says which (in-process callers)."""
        return not self._front_ends or bool(self._arriving) or bool(len(self._queue))

    def _run_round(self, batch: list[_Request]) -> None:
        live = []
        for request in batch:
            request.running = True
            if request.finished:
                continue  # withdrawn by its caller (a timeout) while queued
            if request.future is not None and not request.future.set_running_or_notify_cancel():
                self._finish(
                    request, error=RequestCancelledError("the caller cancelled the request")
                )
            elif self._abort:
                self._finish(
                    request,
                    error=ServerClosedError(
                        f"server {self.name!r} shut down before this request ran"
                    ),
                )
            else:
                live.append(request)
        if not live:
            return
        if not self._batching:
            for request in live:
                self._run_alone(request)
            return
        layout = self._layout
        cap, split = self._rows_per_run, self._split_rows
        # A dynamic batch takes any row count in range: a request that shares its run with no
        # other (a batch's worth of rows or more, or alone in the round) runs as it would
        # without batching, with nothing to stack, pad or split.
        dynamic = layout.static_rows is None
        chunks: list[Chunk] = []
        rows, keys = 0, set()
        for request in live:
            prepared = request.prepared
            if prepared is None:
                # queued before a reload switched batching on: validate it here instead
                try:
                    prepared = request.prepared = layout.prepare(request.leaves)
                except Exception as exc:  # noqa: BLE001 - an input problem, this request's alone
                    self._finish(request, error=exc)
                    continue
            n = prepared.rows
            if split is not None and n > split:
                # More rows than the program takes: pieces joined once the last has run, each
                # piece a run of its own from the backlog, one per round (see _worker_main).
                pieces = chunk_request(request, prepared, split)
                request.pieces = [None] * len(pieces)
                request.remaining = len(pieces)
                self._backlog.extend([piece] for piece in pieces)
            elif dynamic and n >= layout.min_rows and (n >= cap or len(live) == 1):
                self._run_alone(request)
            else:
                chunks.append(Chunk(request, prepared, 0, n))
                rows += n
                keys.add(prepared.group_key)
        if not chunks:
            return
        # The usual round, compatible requests that fit one run, needs no planning.
        if len(keys) == 1 and rows <= cap:
            self._run_chunks(chunks)
            return
        for run in plan_runs(chunks, cap):
            self._run_chunks(run)

    def _run_alone(self, request: _Request) -> None:
        if request.finished:
            return  # withdrawn while the requests before it ran
        started = request.first_run = time.monotonic()
        program = self._program
        try:
            # prepared for batching, or queued before a reload: checked as any call
            out = program.run_leaves(
                request.leaves, checked=request.checked_by is program.signature
            )
            if not request.leaf_answer:
                out = program.signature.build_output(out)
        except Exception as exc:  # noqa: BLE001 - whatever the model raises goes to its caller
            self._finish(request, error=exc)
            return
        request.compute_s = time.monotonic() - started
        self._ran(started, request.rows)
        request.largest_run = request.rows
        self._finish(request, result=out)

    def _run_chunks(self, run: list[Chunk]) -> None:
        # failed: an earlier chunk of it failed; finished: withdrawn (cancelled, past its deadline)
        run = [c for c in run if not (c.owner.failed or c.owner.finished)]
        if not run:
            return
        if self._abort:
            for chunk in run:
                self._finish(
                    chunk.owner,
                    error=ServerClosedError(
                        f"server {self.name!r} shut down before this request's last run"
                    ),
                )
            return
        layout = self._layout
        started = time.monotonic()
        try:
            leaves, padding = layout.stack(run)
            shares = layout.split(self._program.run_leaves(leaves), run, padding)
        except Exception as exc:  # noqa: BLE001 - retried per chunk below, then to its caller
            if len(run) > 1:
                # Find the culprit: each chunk alone, so only its own request sees the error.
                for chunk in run:
                    self._run_chunks([chunk])
                return
            owner = run[0].owner
            owner.failed = True
            self._finish(owner, error=exc)
            return
        rows = sum(c.rows for c in run)
        self._ran(started, rows, padding, run)
        elapsed = time.monotonic() - started
        for chunk in run:
            owner = chunk.owner
            if owner.first_run is None:
                owner.first_run = started
            owner.compute_s += elapsed
        answers: list[tuple[_Request, Any]] = []
        for chunk, share in zip(run, shares):
            owner = chunk.owner
            try:
                if chunk.whole:  # the common case: the request's only chunk
                    owner.largest_run = rows
                    result = share if owner.leaf_answer else layout.build_output(share)
                else:
                    owner.pieces[chunk.index] = share
                    owner.remaining -= 1
                    owner.largest_run = max(owner.largest_run, rows)
                    if owner.remaining:
                        continue
                    pieces, owner.pieces = owner.pieces, []
                    result = layout.join(pieces)
                    if not owner.leaf_answer:
                        result = layout.build_output(result)
            except Exception as exc:  # noqa: BLE001 - fails this request, not the worker
                self._finish(owner, error=exc)
                continue
            answers.append((owner, result))
        self._answer(answers)

    def _ran(
        self, started: float, rows: int, padding: int = 0, run: list[Chunk] | None = None
    ) -> None:
        """Count one model run (of ``run``'s chunks; None: one request alone)."""
        self._stats.ran(rows, padding)
        if self._bus.subscribers:
            requests = 1 if run is None else len({id(c.owner) for c in run})
            self._bus.emit(
                ServeEvent(
                    "batch",
                    self.name,
                    duration_s=time.monotonic() - started,
                    batch_size=rows,
                    requests=requests,
                    padding=padding,
                )
            )

    def _held(self) -> list[_Request]:
        """The requests the worker holds: its round's and those with runs in the backlog."""
        held = {id(r): r for r in self._inflight}
        for run in list(self._backlog):
            held.update((id(c.owner), c.owner) for c in run)
        return list(held.values())

    def _on_worker_death(self, exc: BaseException, generation: int) -> None:
        held = self._held()
        self._inflight = []
        self._backlog.clear()
        crash = WorkerCrashedError(
            f"the worker of server {self.name!r} died while running this request "
            f"({type(exc).__name__}: {exc}); a new worker is reloading the model"
        )
        for request in held:
            self._finish(request, error=crash)
        log.error(
            "server %r: worker died (%s: %s); restarting and reloading %s",
            self.name,
            type(exc).__name__,
            exc,
            self.path,
        )
        self._stats.restarted(exc)
        if self._bus.subscribers:
            self._bus.emit(ServeEvent("restart", self.name, error=exc))
        self._ready = False
        if self._closed:
            self._fail_queued("shut down while its worker was restarting")
            return
        self._consecutive_crashes += 1
        # A model that crashes on every request must not spin: back off up to 5 s between lives.
        delay = (
            0.0 if self._consecutive_crashes <= 1 else min(5.0, 0.05 * 2**self._consecutive_crashes)
        )
        self._start_worker(generation + 1, delay)

    def _reload_until_ready(self, delay: float) -> bool:
        """Reload the model from disk, retrying with back-off; False if shut down meanwhile."""
        attempt = 0
        while True:
            if delay and self._closed_event.wait(delay):
                break
            if self._closed and self._abort:
                break
            try:
                self._load()
                self._reloads += 1
                log.warning("server %r: model reloaded from %s", self.name, self.path)
                return True
            except Exception as exc:  # noqa: BLE001 - a missing or broken file: retry, keep serving
                attempt += 1
                self._ready = False
                log.error(
                    "server %r: reloading %s failed (%s); retrying", self.name, self.path, exc
                )
                self._fail_queued(
                    f"the model could not be reloaded after a crash: {exc}",
                    error_type=ModelUnavailableError,
                )
                delay = min(5.0, 0.1 * 2**attempt)
        self._fail_queued("shut down while its worker was restarting")
        return False

    def _fail_queued(self, why: str, error_type: type[ServeError] = ServerClosedError) -> None:
        for request in self._queue.take_all():
            self._finish(request, error=error_type(f"server {self.name!r}: {why}"))

    # -- lifetime ----------------------------------------------------------------------------------
    def shutdown(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop taking requests; run the queued ones (``drain=True``) or fail them with
        :class:`ServerClosedError`. After ``timeout`` seconds whatever is left fails too, so no
        caller waits forever. Unregisters the name. Safe to call more than once."""
        self._closed = True
        if not drain:
            self._abort = True
        self._queue.close()
        self._closed_event.set()
        if not drain:
            self._fail_queued("shut down before this request ran")
        deadline = time.monotonic() + timeout
        while True:
            worker = self._worker
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker is self._worker or time.monotonic() >= deadline:
                break  # no replacement was started while we waited
        self._fail_queued("shut down before this request ran")
        if self._worker.is_alive():
            # Stuck in a model run: its callers get an answer now; the run's result is dropped.
            for request in self._held():
                self._finish(
                    request,
                    error=ServerClosedError(
                        f"server {self.name!r} shut down while this request was running"
                    ),
                )
        self._ready = False
        with _REGISTRY_LOCK:
            if _REGISTRY.get(self.name) is self:
                del _REGISTRY[self.name]

    close = shutdown

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ready" if self._ready else "restarting")
        return (
            f"<Server {self.name!r} {self.path} device={self.device} "
            f"batch_size={self.batch_size} {state}>"
        )
