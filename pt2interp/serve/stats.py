"""Telemetry for a server: events, subscribers, and the figures ``Server.info()`` reports.

Every request emits ``start`` when it is submitted and then exactly one of ``stop`` (with its
duration, the size of the run that served it and its own row count) or ``exception`` (with the
error). Every model run emits ``batch``; a worker that dies and comes back emits ``restart``.
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

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("pt2interp.serve")

EVENT_KINDS = ("start", "stop", "exception", "batch", "restart")

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
    * ``error``: the exception (``exception``, ``restart``).
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


class ServerStats:
    """Counters and distributions for one server, fed by its events."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.request_count = 0          # started
        self.inference_count = 0        # finished with a result
        self.error_count = 0            # finished with an error
        self.batch_count = 0            # model runs
        self.rows_run = 0               # real rows over all runs
        self.padded_rows = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.batch_sizes: Counter[int] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._recent: deque[float] = deque()   # monotonic completion times within the window

    def record(self, event: ServeEvent) -> None:
        """Fold one event into the figures (to feed these stats from an :class:`EventBus`)."""
        kind = event.kind
        if kind == "start":
            self.started()
        elif kind == "stop":
            self.stopped(event.duration_s)
        elif kind == "exception":
            self.failed(event.error)
        elif kind == "batch":
            self.ran(event.batch_size or 0, event.padding or 0)
        elif kind == "restart":
            self.restarted(event.error)

    # One method per event kind, each one short critical section: callers' threads and the
    # worker all come here, and a lock held across more than a few lines becomes a convoy.
    def started(self) -> None:
        with self._lock:
            self.request_count += 1

    def stopped(self, duration_s: float | None) -> None:
        self.stopped_together([duration_s], time.monotonic())

    def stopped_together(self, durations_s: list[float | None], now: float) -> None:
        """Requests answered at monotonic time ``now`` (one run's callers), with their latencies
        (None: not known)."""
        with self._lock:
            self.inference_count += len(durations_s)
            self._latencies.extend(d for d in durations_s if d is not None)
            self._recent.extend([now] * len(durations_s))
            self._trim(now)

    def failed(self, error: BaseException | None) -> None:
        text = _error_text(error)
        with self._lock:
            self.error_count += 1
            self.last_error = text

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
            self.last_error = text

    def _trim(self, now: float) -> None:
        cutoff = now - THROUGHPUT_WINDOW_S
        recent = self._recent
        while recent and recent[0] < cutoff:
            recent.popleft()

    def snapshot(self) -> dict:
        """The figures as plain JSON-friendly values (latencies in milliseconds)."""
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            uptime = now - self._started_mono
            window = min(THROUGHPUT_WINDOW_S, uptime) or 1e-9
            latencies = sorted(self._latencies)
            return {
                "request_count": self.request_count,
                "inference_count": self.inference_count,
                "error_count": self.error_count,
                "batch_count": self.batch_count,
                "mean_batch_size": round(self.rows_run / self.batch_count, 4) if self.batch_count else 0.0,
                "padded_rows": self.padded_rows,
                "batch_size_distribution": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "restarts": self.restarts,
                "last_error": self.last_error,
                "started_at": self.started_at,
                "uptime_s": round(uptime, 3),
                "throughput_rps": round(len(self._recent) / window, 3),
                "latency_ms": {f"p{q}": round(percentile(latencies, q) * 1000.0, 4) for q in (50, 95, 99)},
                "latency_samples": len(latencies),
            }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99), percentile([], 50)
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
