"""Telemetry for a server: events, subscribers, and the figures ``Server.info()`` reports.

Every request emits ``start`` when it is submitted and then exactly one of ``stop`` (with its
duration, the size of the run that served it and its own row count) or ``exception`` (with the
error, and its kind: see :func:`error_kind`). Every model run emits ``batch``; a worker that
dies and comes back emits ``restart``.
The server hands the figures of each event to :class:`ServerStats` and, when anyone has
subscribed, to the :class:`EventBus` as a :class:`ServeEvent`: the counters ``info()`` shows are
made from the very figures subscribers see, and nobody pays for building events nobody reads.
:meth:`ServerStats.record` folds a whole event in, for use as a subscriber of another bus.

>>> bus, stats = EventBus(), ServerStats()
>>> unsubscribe = bus.subscribe(stats.record)
>>> bus.emit(ServeEvent("start", "m", request_id=1))
>>> bus.emit(ServeEvent("batch", "m", duration_s=0.002, batch_size=4, requests=2))
>>> bus.emit(ServeEvent("stop", "m", request_id=1, duration_s=0.004, batch_size=4, input_count=2))
>>> snap = stats.snapshot()
>>> snap["inference_count"], snap["batch_count"], snap["mean_batch_size"], snap["latency_ms"]["p50"]
(1, 1, 4.0, 4.0)
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("pt2interp.serve")

EVENT_KINDS = ("start", "stop", "exception", "batch", "restart")

# Histogram buckets (seconds) for request, queue and compute times: Prometheus's defaults shifted
# down, since a model run here takes from tens of microseconds to seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# How a failed request is counted. Only "model" and "crash" are inference errors (the model or
# its worker failed); the others are the client's doing or the server saying "not now".
ERROR_KINDS = ("input", "model", "crash", "timeout", "cancelled", "unavailable")

# Percentiles come from the most recent requests: a bounded window keeps info() cheap and lets
# the figures follow the current load rather than the whole history.
LATENCY_WINDOW = 10_000
THROUGHPUT_WINDOW_S = 10.0


@dataclass(slots=True)
class ServeEvent:
    """One telemetry event (read-only by convention: not frozen, because frozen dataclasses are
    several times slower to build and every request makes two of these).

    ``kind``: ``start`` | ``stop`` | ``exception`` (per request), ``batch`` (per model run),
    ``restart`` (the worker died and was replaced). Fields that do not apply are None:

    * ``duration_s``: request latency from submission to result (``stop``, ``exception``), or the
      model run's own time (``batch``);
    * ``batch_size``: rows in the model run (padding not counted); for a request, the largest run
      that served it;
    * ``input_count``: the request's own rows along the batch dimension (1 where the program has
      none);
    * ``requests``: requests that shared the run (``batch``);
    * ``padding``: rows added to fill a static batch (``batch``);
    * ``error``: the exception (``exception``, ``restart``);
    * ``error_kind``: one of :data:`ERROR_KINDS` (``exception``).
    """

    kind: str
    server: str
    request_id: int | None = None
    time: float = field(default_factory=time.time)
    duration_s: float | None = None
    batch_size: int | None = None
    input_count: int | None = None
    requests: int | None = None
    padding: int | None = None
    error: BaseException | None = None
    error_kind: str | None = None


class EventBus:
    """Subscribers called synchronously, in the emitting thread, in subscription order.

    A subscriber that raises is logged and kept: telemetry never fails a request.
    """

    def __init__(self):
        # A tuple, swapped whole: emit() iterates it without the lock, and the server reads its
        # truth (anyone listening?) to build events only when someone will see them.
        self.subscribers: tuple[Callable[[ServeEvent], None], ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[ServeEvent], None]) -> Callable[[], None]:
        """Call ``fn(event)`` for every event from now on; returns a function that unsubscribes."""
        with self._lock:
            self.subscribers = self.subscribers + (fn,)

        def unsubscribe() -> None:
            with self._lock:
                subs = list(self.subscribers)
                if fn in subs:
                    subs.remove(fn)
                self.subscribers = tuple(subs)

        return unsubscribe

    def emit(self, event: ServeEvent) -> None:
        for fn in self.subscribers:
            try:
                fn(event)
            except Exception:
                log.exception("event subscriber %r failed on a %s event", fn, event.kind)


class Histogram:
    """Counts of observations per bucket (upper bounds, seconds), with their sum: what a
    Prometheus histogram exposes, kept by the server so that in-process users see it too."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict:
        """``{"buckets": [[bound, cumulative count], ...], "count": n, "sum": s}``."""
        cumulative, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            cumulative.append([bound, running])
        return {"buckets": cumulative, "count": running + self.counts[-1], "sum": self.sum}


class ServerStats:
    """Counters and distributions for one server, fed by its events."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.request_count = 0  # started
        self.inference_count = 0  # finished with a result
        self.errors_by_kind: Counter[str] = Counter()  # finished with an error, by ERROR_KINDS
        self.batch_count = 0  # model runs
        self.rows_run = 0  # real rows over all runs
        self.padded_rows = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.last_error_kind: str | None = None
        self.last_error_at: float | None = None
        self.batch_sizes: Counter[int] = Counter()
        self.queue_time = Histogram()  # submission to the start of the request's first run
        self.compute_time = Histogram()  # the model runs that served the request, end to end
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._recent: deque[float] = deque()  # monotonic completion times within the window

    @property
    def error_count(self) -> int:
        """Inference errors: requests the model (or its dying worker) failed."""
        return self.errors_by_kind["model"] + self.errors_by_kind["crash"]

    def record(self, event: ServeEvent) -> None:
        """Fold one event into the figures (to feed these stats from an :class:`EventBus`)."""
        kind = event.kind
        if kind == "start":
            self.started()
        elif kind == "stop":
            self.stopped(event.duration_s)
        elif kind == "exception":
            self.failed(event.error, event.error_kind)
        elif kind == "batch":
            self.ran(event.batch_size or 0, event.padding or 0)
        elif kind == "restart":
            self.restarted(event.error)

    # One method per event kind, each one short critical section: callers' threads and the
    # worker all come here, and a lock held across more than a few lines becomes a convoy.
    def started(self) -> None:
        with self._lock:
            self.request_count += 1

    def stopped(
        self, duration_s: float | None, queue_s: float | None = None, compute_s: float | None = None
    ) -> None:
        self.stopped_together(
            [duration_s],
            time.monotonic(),
            None if queue_s is None else [queue_s],
            None if compute_s is None else [compute_s],
        )

    def stopped_together(
        self,
        durations_s: list[float | None],
        now: float,
        queue_s: list[float] | None = None,
        compute_s: list[float] | None = None,
    ) -> None:
        """Requests answered at monotonic time ``now`` (one run's callers), with their latencies
        (None: not known) and, where known, their queue and compute times."""
        with self._lock:
            self.inference_count += len(durations_s)
            self._latencies.extend(d for d in durations_s if d is not None)
            self._recent.extend([now] * len(durations_s))
            self._trim(now)
            if queue_s is not None:
                for q in queue_s:
                    self.queue_time.observe(q)
            if compute_s is not None:
                for c in compute_s:
                    self.compute_time.observe(c)

    def failed(self, error: BaseException | None, kind: str | None = None) -> None:
        text = _error_text(error)
        kind = kind or error_kind(error)
        with self._lock:
            self.errors_by_kind[kind] += 1
            self.last_error, self.last_error_kind, self.last_error_at = text, kind, time.time()

    def ran(self, rows: int, padding: int = 0) -> None:
        with self._lock:
            self.batch_count += 1
            self.rows_run += rows
            self.padded_rows += padding
            self.batch_sizes[rows] += 1

    def restarted(self, error: BaseException | None) -> None:
        text = _error_text(error)
        with self._lock:
            self.restarts += 1
            self.last_error, self.last_error_kind, self.last_error_at = text, "crash", time.time()

    def _trim(self, now: float) -> None:
        cutoff = now - THROUGHPUT_WINDOW_S
        recent = self._recent
        while recent and recent[0] < cutoff:
            recent.popleft()

    def snapshot(self) -> dict:
        """The figures as plain JSON-friendly values (latencies in milliseconds).

        ``error_count`` counts inference errors only (the model failed, or its worker died);
        ``errors_by_kind`` counts every failed request by :data:`ERROR_KINDS`, and
        ``rejected_count``, ``timeout_count`` and ``cancelled_count`` repeat three of those.
        """
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            uptime = now - self._started_mono
            window = min(THROUGHPUT_WINDOW_S, uptime) or 1e-9
            latencies = sorted(self._latencies)
            kinds = self.errors_by_kind
            return {
                "request_count": self.request_count,
                "inference_count": self.inference_count,
                "error_count": self.error_count,
                "rejected_count": kinds["input"],
                "timeout_count": kinds["timeout"],
                "cancelled_count": kinds["cancelled"],
                "errors_by_kind": {k: kinds[k] for k in ERROR_KINDS},
                "batch_count": self.batch_count,
                "mean_batch_size": round(self.rows_run / self.batch_count, 4)
                if self.batch_count
                else 0.0,
                "padded_rows": self.padded_rows,
                "batch_size_distribution": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "restarts": self.restarts,
                "last_error": self.last_error,
                "last_error_kind": self.last_error_kind,
                "last_error_at": self.last_error_at,
                "started_at": self.started_at,
                "uptime_s": round(uptime, 3),
                "throughput_rps": round(len(self._recent) / window, 3),
                "latency_ms": latency_percentiles_ms(latencies),
                "latency_samples": len(latencies),
                "queue_seconds": self.queue_time.snapshot(),
                "compute_seconds": self.compute_time.snapshot(),
            }


def error_kind(error: BaseException | None) -> str:
    """Which of :data:`ERROR_KINDS` a request's error is.

    >>> from pt2interp.errors import InputMismatchError
    >>> error_kind(InputMismatchError("x")), error_kind(ZeroDivisionError())
    ('input', 'model')
    """
    # Imported here: server.py imports this module, and these classes live there.
    from pt2interp.errors import InputMismatchError
    from pt2interp.serve import server

    if isinstance(error, InputMismatchError):
        return "input"
    if isinstance(error, server.RequestTimeoutError):
        return "timeout"
    if isinstance(error, server.RequestCancelledError):
        return "cancelled"
    if isinstance(
        error, (server.ServerClosedError, server.ModelUnavailableError, server.ServerBusyError)
    ):
        return "unavailable"
    if isinstance(error, server.WorkerCrashedError):
        return "crash"
    return "model"


def latency_percentiles_ms(sorted_s: list[float]) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` in milliseconds, from sorted seconds."""
    return {f"p{q}": round(percentile(sorted_s, q) * 1000.0, 4) for q in (50, 95, 99)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none).

    >>> (percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99),
    ...  percentile([], 50))
    (2.0, 4.0, 0.0)
    """
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"
