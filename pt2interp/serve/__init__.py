"""Serve ``.pt2`` programs: in process (:class:`Server`) and over HTTP (:func:`create_app`,
``pt2interp serve``), with dynamic batching, telemetry and a live status page.

>>> import torch
>>> from pt2interp.serve import Server
>>> with Server("fixtures/zoo/multi_io.pt2", name="doc-multi") as server:
...     a, b, mask, scale = (
...         torch.zeros(5, 6), torch.zeros(5, 3), torch.zeros(5, 4, dtype=torch.bool), torch.ones(4)
...     )
...     out = server.predict(a, b, mask, scale=scale)
...     sorted(out), type(out["pair"]).__name__
(['cat', 'pair', 'sum'], 'tuple')

``create_app`` lives in :mod:`pt2interp.serve.http` and needs FastAPI; it is imported on first
use so that the in-process server works without the web stack.
"""

from pt2interp.serve.batching import BatchLayout
from pt2interp.serve.server import (
    ModelUnavailableError,
    RequestCancelledError,
    RequestTimeoutError,
    ServeError,
    ServeFuture,
    Server,
    ServerBusyError,
    ServerClosedError,
    WorkerCrashedError,
    get_server,
    list_servers,
)
from pt2interp.serve.stats import ServeEvent

__all__ = [
    "BatchLayout",
    "ModelUnavailableError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ServeError",
    "ServeEvent",
    "ServeFuture",
    "Server",
    "ServerBusyError",
    "ServerClosedError",
    "WorkerCrashedError",
    "create_app",
    "get_server",
    "list_servers",
]


def __getattr__(name: str):
    if name == "create_app":
        from pt2interp.serve.http import create_app

        return create_app
    raise AttributeError(f"module 'pt2interp.serve' has no attribute {name!r}")
