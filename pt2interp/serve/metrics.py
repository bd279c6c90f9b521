"""What the HTTP server measures: Prometheus metrics (``GET /metrics``) and the end-to-end
figures of the status page.

Names follow Prometheus's conventions: counters end in ``_total``, durations are histograms in
``_seconds``, and the standard ``process_*``, ``python_*`` and ``python_gc_*`` collectors come
along. Two sources feed them:

* the HTTP layer itself (:class:`HttpMetrics`): responses by model, status code and status class,
  and the request duration from the first byte handled to the last byte sent, covering body
  reading, decoding, queueing, the model, encoding and sending;
* each :class:`~pt2interp.serve.Server`'s own figures, read at scrape time
  (:class:`ServerCollector`): inferences, inference errors (the model failed), failed requests
  by kind, model runs, rows per run, queue time and compute time as separate histograms (as
  Triton splits them), queue depth, readiness and worker restarts. Reading them at scrape time
  keeps them equal to ``Server.info()``, in-process predicts included.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pt2interp.serve.stats import (
    ERROR_KINDS,
    LATENCY_BUCKETS,
    LATENCY_WINDOW,
    latency_percentiles_ms,
)

UNKNOWN_MODEL = "_unknown"  # the label for names no server has (keeps label values bounded)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx``: 499 (the client went away) counts with the client's errors."""
    return f"{status // 100}xx"


class ModelHttpStats:
    """One model's end-to-end figures as the HTTP server sees them (for the status page)."""

    def __init__(self):
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.by_class: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.last_failure: dict | None = None

    def snapshot(self) -> dict:
        latencies = sorted(self.latencies)
        return {
            "responses_by_class": dict(sorted(self.by_class.items())),
            "responses_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "latency_ms": latency_percentiles_ms(latencies),
            "latency_samples": len(latencies),
            "last_failure": self.last_failure,
        }


class HttpMetrics:
    """The registry behind ``/metrics`` and the HTTP side of ``/v2/status``."""

    def __init__(self, models: Mapping[str, object]):
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            # The default instances, registered here too: each reads this process afresh.
            self.registry.register(collector)
        self.responses = PromCounter(
            "pt2interp_http_responses",
            "Infer responses by model, status code and status class (2xx, 4xx, "
            "5xx); 499: the client went away first.",
            ["model", "code", "class"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "pt2interp_http_request_duration_seconds",
            "Infer requests from the first byte handled to the last byte of the response sent.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Kept by the HTTP app (its event loop alone writes them), read at scrape time.
        self.inflight_bytes: dict[str, int] = dict.fromkeys(models, 0)
        self.inflight_rows: dict[str, int] = dict.fromkeys(models, 0)
        self.registry.register(ServerCollector(models))
        self.registry.register(_InflightCollector(self))
        self._models = {name: ModelHttpStats() for name in models}
        self._children: dict[tuple[str, int], tuple] = {}  # labels() is dear: once per series
        self._lock = threading.Lock()  # the status page may be read from another thread

    def observe(self, model: str, status: int, duration_s: float, error: str | None = None) -> None:
        """One answered (or abandoned, 499) infer request."""
        label = model if model in self._models else UNKNOWN_MODEL
        cls = status_class(status)
        children = self._children.get((label, status))
        if children is None:
            children = self._children[(label, status)] = (
                self.responses.labels(label, str(status), cls),
                self.duration.labels(label),
            )
        children[0].inc()
        children[1].observe(duration_s)
        stats = self._models.get(model)
        if stats is None:
            return
        with self._lock:
            stats.by_class[cls] += 1
            stats.by_status[status] += 1
            if status == 200:
                stats.latencies.append(duration_s)
            elif error is not None:
                stats.last_failure = {"status": status, "error": error, "time": time.time()}

    def snapshot(self, model: str) -> dict:
        with self._lock:
            return self._models[model].snapshot()


class _InflightCollector:
    """The HTTP app's in-flight bodies and rows per model, read at scrape time."""

    def __init__(self, metrics: HttpMetrics):
        self.metrics = metrics

    def collect(self):
        inflight_bytes = GaugeMetricFamily(
            "pt2interp_http_inflight_bytes",
            "Request body bytes held by requests being answered.",
            labels=["model"],
        )
        inflight_rows = GaugeMetricFamily(
            "pt2interp_http_inflight_rows", "Rows accepted and not yet answered.", labels=["model"]
        )
        for name, n in list(self.metrics.inflight_bytes.items()):
            inflight_bytes.add_metric([name], n)
        for name, n in list(self.metrics.inflight_rows.items()):
            inflight_rows.add_metric([name], n)
        yield from (inflight_bytes, inflight_rows)


class ServerCollector:
    """Prometheus figures read from each server's ``info()`` at scrape time."""

    def __init__(self, models: Mapping[str, object]):
        self.models = models

    def collect(self):
        inferences = CounterMetricFamily(
            "pt2interp_inferences", "Requests answered with a result.", labels=["model"]
        )
        errors = CounterMetricFamily(
            "pt2interp_inference_errors",
            "Requests the model failed (it raised, or its worker died).",
            labels=["model"],
        )
        failures = CounterMetricFamily(
            "pt2interp_request_failures",
            "Requests answered with an error, by kind: " + ", ".join(ERROR_KINDS) + ".",
            labels=["model", "kind"],
        )
        runs = CounterMetricFamily(
            "pt2interp_model_runs", "Model runs (one per batch).", labels=["model"]
        )
        restarts = CounterMetricFamily(
            "pt2interp_worker_restarts", "Worker deaths followed by a reload.", labels=["model"]
        )
        queue_depth = GaugeMetricFamily(
            "pt2interp_queue_depth", "Requests waiting for the worker.", labels=["model"]
        )
        ready = GaugeMetricFamily(
            "pt2interp_model_ready", "1 when the model takes requests.", labels=["model"]
        )
        batch_rows = HistogramMetricFamily(
            "pt2interp_batch_rows", "Rows per model run.", labels=["model"]
        )
        queue_time = HistogramMetricFamily(
            "pt2interp_queue_duration_seconds",
            "Time from submission to the start of the request's first model run.",
            labels=["model"],
        )
        compute_time = HistogramMetricFamily(
            "pt2interp_compute_duration_seconds",
            "Time in the model runs that served the request.",
            labels=["model"],
        )
        for name, server in self.models.items():
            info = server.info()
            inferences.add_metric([name], info["inference_count"])
            errors.add_metric([name], info["error_count"])
            for kind, n in info["errors_by_kind"].items():
                failures.add_metric([name, kind], n)
            runs.add_metric([name], info["batch_count"])
            restarts.add_metric([name], info["restarts"])
            queue_depth.add_metric([name], info["queue_depth"])
            ready.add_metric([name], 1.0 if info["ready"] else 0.0)
            dist = {int(k): v for k, v in info["batch_size_distribution"].items()}
            buckets = [
                (str(b), sum(n for size, n in dist.items() if size <= b)) for b in _BATCH_BUCKETS
            ]
            buckets.append(("+Inf", sum(dist.values())))
            batch_rows.add_metric(
                [name], buckets, sum_value=sum(size * n for size, n in dist.items())
            )
            for family, key in ((queue_time, "queue_seconds"), (compute_time, "compute_seconds")):
                hist = info[key]
                cumulative = [(repr(float(bound)), n) for bound, n in hist["buckets"]]
                cumulative.append(("+Inf", hist["count"]))
                family.add_metric([name], cumulative, sum_value=hist["sum"])
        yield from (
            inferences,
            errors,
            failures,
            runs,
            restarts,
            queue_depth,
            ready,
            batch_rows,
            queue_time,
            compute_time,
        )
