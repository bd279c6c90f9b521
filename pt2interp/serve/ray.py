"""A Ray Serve application for ``.pt2`` files: the Open Inference Protocol v2 routes of
:mod:`pt2interp.serve.http` on every replica, behind Ray's HTTP proxy.

Each replica is a Ray actor process holding its own :class:`~pt2interp.serve.Server` per model,
so requests are batched per replica, and the same :func:`~pt2interp.serve.http.create_app` app
answers them: one implementation of the protocol, whether behind uvicorn or Ray. Answers carry
an ``x-pt2interp-replica`` header naming the Ray replica that made them.

>>> import ray
>>> from pt2interp.serve.ray import build_app, deploy
>>> ray.init(num_cpus=2, include_dashboard=False)  # doctest: +SKIP
>>> deploy(["fixtures/zoo/mlp.pt2"], replicas=2, batch_size=16, port=8000)  # doctest: +SKIP
>>> # POST http://127.0.0.1:8000/v2/models/mlp/infer, as with `pt2interp serve`

``build_app`` gives the bound application for ``serve.run`` (or a Serve config's import path);
``deploy`` starts Serve's HTTP proxy on a host and port and runs it. Model files are opened by
the replicas, so on a cluster of several machines each path must exist on every node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    import ray
    from ray import serve
except ImportError as exc:  # the optional extra is missing: say how to get it
    raise ModuleNotFoundError(
        "pt2interp.serve.ray needs Ray Serve: pip install 'pt2interp[ray]'", name="ray"
    ) from exc
except Exception as exc:  # installed but unusable here, e.g. a protobuf its gRPC code refuses
    raise ImportError(
        f"pt2interp.serve.ray: Ray Serve is installed but cannot be imported here "
        f"({type(exc).__name__}: {exc})",
        name="ray",
    ) from exc

from pt2interp import read_schema

REPLICA_HEADER = "x-pt2interp-replica"
DEFAULT_APP_NAME = "pt2interp"
DEFAULT_MAX_ONGOING_REQUESTS = 256

# The app this process's replica serves. Ray's ingress takes its ASGI app when the deployment
# is defined, on the driver, before any replica exists; it gets _ThisReplica, which forwards to
# this. A replica is an actor, and an actor has a process of its own, so one slot is enough.
_replica_app: Any = None


class _ThisReplica:
    """The ASGI app Ray's ingress holds: forwards to the app the replica in this process made."""

    async def __call__(self, scope, receive, send) -> None:
        app = _replica_app
        if app is None:  # only between a replica's failed start and its end
            if scope["type"] == "http":
                await _send_unavailable(send)
            return
        await app(scope, receive, send)


class _TaggedApp:
    """``app``, with each HTTP answer's headers naming the replica that made it."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode("ascii", "replace"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = self.header

        async def send_tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_tagged)


class Pt2Replica:
    """One replica: a :class:`~pt2interp.serve.Server` per model and the OIP v2 app over them.

    ``models`` is a list of ``(name, path)``; ``server_options`` go to each ``Server``,
    ``http_options`` to :func:`~pt2interp.serve.http.create_app`.
    """

    def __init__(
        self,
        models: list[tuple[str, str]],
        server_options: dict[str, Any],
        http_options: dict[str, Any],
    ):
        global _replica_app
        from pt2interp.serve.http import create_app
        from pt2interp.serve.server import Server

        http_options = dict(http_options)
        self.servers: list[Server] = []
        self.graceful_timeout_s = float(http_options.pop("graceful_timeout_s", 10.0))
        try:
            for name, path in models:
                self.servers.append(Server(path, name=name, **server_options))
            app = create_app(self.servers, **http_options)
        except BaseException:
            self._shutdown_servers()
            raise
        _replica_app = _TaggedApp(app, _replica_name())

    def _shutdown_servers(self) -> None:
        for server in self.servers:
            server.shutdown(timeout=self.graceful_timeout_s)

    def __del__(self) -> None:
        # Serve calls this when it stops the replica (scale-down, redeploy, shutdown): the
        # queued requests are answered before the servers go.
        global _replica_app
        _replica_app = None
        self._shutdown_servers()


Pt2Deployment = serve.deployment(name=DEFAULT_APP_NAME)(serve.ingress(_ThisReplica())(Pt2Replica))


def build_app(
    models: str | os.PathLike | Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike],
    *,
    replicas: int | None = None,
    autoscaling: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    batch_timeout_ms: float = 0.0,
    request_timeout_s: float = 60.0,
    threads: int | str | None = None,
    device: str | None = None,
    max_ongoing_requests: int | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    http_options: Mapping[str, Any] | None = None,
    logging_config: Mapping[str, Any] | None = None,
    deployment_name: str = DEFAULT_APP_NAME,
) -> serve.Application:
    """A bound Ray Serve application serving ``models`` over OIP v2 (for ``serve.run``).

    ``models``: a path, several (each model named after its file), or a mapping of names to
    paths. ``replicas`` is a fixed replica count (default 1); ``autoscaling`` instead is Ray's
    ``autoscaling_config`` (``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, ...), passed through as it is. ``batch_size``,
    ``batch_timeout_ms``, ``request_timeout_s``, ``threads`` and ``device`` configure each
    replica's :class:`~pt2interp.serve.Server` (``threads=None`` keeps the torch threads Ray
    gives an actor: its ``num_cpus``). ``max_ongoing_requests`` is how many requests Ray hands
    one replica at a time (default 256): a replica batches only what it holds, and Ray's own
    default, 5, is less than a batch; past the cap Ray's proxy holds requests back and polls,
    which cut 1-row requests from 64 connections to one replica from about 200 req/s to 30
    when the cap was 32. What a replica holds is bounded by its own limits as well
    (``max_queued_rows``, ``max_inflight_bytes``: 429 and 503). ``ray_actor_options``
    (``num_cpus``, ``num_gpus``, ``runtime_env``, ...) and ``http_options`` (``create_app``'s
    limits, and ``graceful_timeout_s`` for a stopping replica's queue) pass through, as does
    ``logging_config`` (Ray's, e.g. ``{"enable_access_log": False}``).
    """
    named = _named_paths(models)
    if autoscaling is not None and replicas is not None:
        raise ValueError("pass replicas or autoscaling, not both: autoscaling sets the count")
    if replicas is not None and (not isinstance(replicas, int) or replicas < 1):
        raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_ongoing_requests is None:
        max_ongoing_requests = DEFAULT_MAX_ONGOING_REQUESTS
    options: dict[str, Any] = {
        "name": deployment_name,
        "max_ongoing_requests": int(max_ongoing_requests),
    }
    if autoscaling is not None:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = replicas or 1
    if ray_actor_options is not None:
        options["ray_actor_options"] = dict(ray_actor_options)
    if logging_config is not None:
        options["logging_config"] = dict(logging_config)
    server_options = {
        "device": device,
        "batch_size": int(batch_size),
        "batch_timeout_ms": float(batch_timeout_ms),
        "request_timeout_s": float(request_timeout_s),
        "threads": threads,
    }
    return Pt2Deployment.options(**options).bind(named, server_options, dict(http_options or {}))


def deploy(
    models: str | os.PathLike | Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = DEFAULT_APP_NAME,
    route_prefix: str = "/",
    **build_options: Any,
):
    """:func:`build_app`, then :func:`run_app`: the deployment's handle, once every replica is
    up. ``serve.shutdown()`` stops it all."""
    app = build_app(models, **build_options)
    return run_app(app, host=host, port=port, app_name=app_name, route_prefix=route_prefix)


def run_app(
    app: serve.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = DEFAULT_APP_NAME,
    route_prefix: str = "/",
):
    """Start Serve's HTTP proxy on ``host:port`` (on the cluster ``ray.init`` joined, or a new
    local one) and run ``app`` there; returns once every replica is up.

    Where Serve already runs on the cluster, its proxy keeps the host and port it has (Ray
    applies HTTP options only when Serve starts). A replica that cannot load its models fails
    the deployment: Ray retries it a few times, then this raises :class:`DeployFailedError`
    with the replica's error.
    """
    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": host, "port": int(port)})
    try:
        return serve.run(app, name=app_name, route_prefix=route_prefix)
    except RuntimeError as exc:
        raise DeployFailedError(_replica_error(str(exc))) from exc


class DeployFailedError(RuntimeError):
    """The application did not start: its replicas failed (the message says how)."""


def _replica_error(message: str) -> str:
    """The last line of Ray's report that names an exception: the replica's own error, not
    the traceback around it."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line)]
    return (named or lines or ["the deployment failed"])[-1]


def _named_paths(models) -> list[tuple[str, str]]:
    """``[(name, absolute path)]``, checked here: a missing or unreadable file is named before
    any replica starts (a replica failing to load is retried by Ray, slowly, and its error
    lands in Ray's logs)."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    pairs = (
        [(str(n), p) for n, p in models.items()]
        if isinstance(models, Mapping)
        else [(Path(p).stem, p) for p in models]
    )
    if not pairs:
        raise ValueError("no models to serve")
    names = [n for n, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two models named {duplicates[0]!r}: name them, NAME=FILE")
    named = []
    for name, path in pairs:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, "no such file", str(path))
        read_schema(path)  # an unreadable archive: its error here, not in Ray's logs
        named.append((name, str(path.resolve())))
    return named


def _replica_name() -> str:
    """The replica's Ray actor name (``ray.get_actor(name, namespace="serve")`` finds it)."""
    context = serve.get_replica_context()
    replica_id = getattr(context, "replica_id", None)
    if replica_id is not None and hasattr(replica_id, "to_full_id_str"):
        return replica_id.to_full_id_str()
    return str(getattr(context, "replica_tag", os.getpid()))


async def _send_unavailable(send) -> None:
    body = b'{"error": "this replica has no models loaded"}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
