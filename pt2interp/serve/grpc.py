"""The Open Inference Protocol v2 over gRPC: KServe's ``inference.GRPCInferenceService``
(``proto/grpc_predict_v2.proto``, the service Triton speaks too) for the same
:class:`~pt2interp.serve.Server` objects the HTTP app serves.

Infer requests go to :meth:`Server.submit_leaves <pt2interp.serve.Server.submit_leaves>`, as
REST ones do: the two share each model's batches, queue and statistics. The request is read
with :mod:`.oip`'s rules (names, datatypes, shapes, requested outputs); inputs come as typed
``contents`` (``fp32_contents`` for FP32, ``int64_contents`` for INT64, ...) or as
``raw_input_contents``, one little-endian buffer per input; outputs always go back as
``raw_output_contents``, in the order requested (every output, in the model's order, when the
request names none).

Errors carry a gRPC status and a message naming the problem: INVALID_ARGUMENT a wrong request,
NOT_FOUND an unknown model or version, RESOURCE_EXHAUSTED a model holding ``max_queued_rows``
rows already (or a message over the size limit), UNAVAILABLE a model shut down or restarting,
DEADLINE_EXCEEDED no answer within the client's deadline or ``request_timeout_s`` (the request
is withdrawn, as it is when the client cancels), INTERNAL the model failed.

>>> import numpy as np
>>> import grpc as grpclib
>>> from pt2interp.serve import Server
>>> from pt2interp.serve.proto import grpc_predict_v2_pb2 as pb
>>> from pt2interp.serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
>>> server = Server("fixtures/zoo/mlp.pt2", name="doc-grpc")
>>> front = GrpcThread([server], port=0)
>>> stub = GRPCInferenceServiceStub(grpclib.insecure_channel(f"127.0.0.1:{front.port}"))
>>> request = pb.ModelInferRequest(model_name="doc-grpc")
>>> x = request.inputs.add(name="x", datatype="FP32", shape=[4, 16])
>>> request.raw_input_contents.append(np.zeros((4, 16), np.float32).tobytes())
>>> answer = stub.ModelInfer(request)
>>> answer.outputs[0].name, list(answer.outputs[0].shape), len(answer.raw_output_contents[0])
('out', [4, 8], 128)
>>> front.stop(); server.shutdown()
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

import pt2interp
from pt2interp.errors import InputMismatchError
from pt2interp.serve.oip import (
    EXTENSIONS,
    RequestError,
    decode_payload,
    encode_value,
    failure_answer,
    public_message,
    shown_name,
)
from pt2interp.serve.proto import grpc_predict_v2_pb2 as pb
from pt2interp.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from pt2interp.serve.server import (
    DEFAULT_MAX_QUEUED_ROWS,
    RequestCancelledError,
    RequestTimeoutError,
    Server,
    ServerBusyError,
)

log = logging.getLogger("pt2interp.serve")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Requests with more raw bytes than this are decoded in a worker thread, so that the event loop
# keeps answering health checks and small requests meanwhile.
_DECODE_IN_THREAD_BYTES = 256 * 1024

# The typed contents field each datatype's values travel in (FP16 and BF16 have none: raw only).
CONTENTS_FIELD = (
    {"BOOL": "bool_contents", "INT64": "int64_contents", "UINT64": "uint64_contents"}
    | dict.fromkeys(("INT8", "INT16", "INT32"), "int_contents")
    | dict.fromkeys(("UINT8", "UINT16", "UINT32"), "uint_contents")
    | {"FP32": "fp32_contents", "FP64": "fp64_contents"}
)
_ITEMSIZE = {
    "BOOL": 1,
    "INT8": 1,
    "UINT8": 1,
    "INT16": 2,
    "UINT16": 2,
    "FP16": 2,
    "BF16": 2,
    "INT32": 4,
    "UINT32": 4,
    "FP32": 4,
    "INT64": 8,
    "UINT64": 8,
    "FP64": 8,
}
# HTTP statuses of oip's RequestError -> the gRPC codes that mean the same
_CODE_OF_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class GrpcLimits:
    """Bounds on requests: ``max_message_bytes`` for a message either way (larger ones get
    RESOURCE_EXHAUSTED from gRPC itself), ``max_queued_rows`` for the rows one model's
    unanswered gRPC requests may hold, ``request_timeout_s`` for the wait for an answer (None:
    each server's own; a client's shorter deadline wins)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS
    request_timeout_s: float | None = None


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of ``inference.GRPCInferenceService`` for ``models`` (name -> Server)."""

    def __init__(self, models: Mapping[str, Server], limits: GrpcLimits | None = None):
        self.models = dict(models)
        self.limits = limits or GrpcLimits()
        self._queued_rows: collections.Counter[str] = collections.Counter()  # event loop only
        for server in self.models.values():
            server.attach_front_end()

    # -- health and metadata ---------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        ready = bool(self.models) and all(s.ready for s in self.models.values())
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context):
        server = await self._lookup(context, request.name, request.version)
        return pb.ModelReadyResponse(ready=server.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="pt2interp", version=pt2interp.__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request, context):
        server = await self._lookup(context, request.name, request.version)
        meta = server.metadata()

        def tensors(entries):
            return [pb.ModelMetadataResponse.TensorMetadata(**e) for e in entries]

        return pb.ModelMetadataResponse(
            name=request.name,
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=tensors(meta["inputs"]),
            outputs=tensors(meta["outputs"]),
        )

    async def _lookup(self, context, name: str, version: str) -> Server:
        try:
            return lookup(self.models, name, version)
        except RequestError as exc:
            await context.abort(_CODE_OF_STATUS[exc.status], str(exc))

    # -- infer -------------------------------------------------------------------------------------
    async def ModelInfer(self, request, context):
        name = request.model_name
        server = await self._lookup(context, name, request.model_version)
        server.announce(1)  # on its way: a batch being formed may wait for it
        announced = True
        rows = 0
        try:
            raw_bytes = sum(len(r) for r in request.raw_input_contents)
            if raw_bytes > _DECODE_IN_THREAD_BYTES:
                decoded = await asyncio.to_thread(decode_infer_request, request, server.layout)
            else:
                decoded = decode_infer_request(request, server.layout)
            queued = self._queued_rows[name]
            if queued and queued + decoded.rows > self.limits.max_queued_rows:
                raise RequestError(
                    429,
                    f"model {name!r} has {queued} rows waiting (at most "
                    f"{self.limits.max_queued_rows}); retry later",
                )
            rows = decoded.rows
            self._queued_rows[name] += rows
            server.announce(-1)  # queued from now on, no longer on its way
            announced = False
            leaves = await self._wait(server, decoded, context)
            return encode_infer_response(leaves, server.layout, decoded, name)
        except RequestError as exc:
            if announced:  # refused before it reached the server: count it there
                server.report_rejected(
                    ServerBusyError(str(exc)) if exc.status == 429 else InputMismatchError(str(exc))
                )
            code = _CODE_OF_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, str(exc))
        finally:
            if announced:
                server.announce(-1)
            if rows:
                self._queued_rows[name] -= rows

    async def _wait(self, server: Server, decoded, context) -> list[Any]:
        """Submit and wait; withdrawn if the client cancels or the deadline passes first."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def on_done(result, error):  # in the worker's thread
            loop.call_soon_threadsafe(_settle, waiter, result, error)

        timeout = (
            self.limits.request_timeout_s
            if self.limits.request_timeout_s is not None
            else server.request_timeout_s
        )
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.0))
        handle = server.submit_leaves(decoded.leaves, on_done)
        # a timer, not asyncio.wait_for: that costs a task per request
        timer = loop.call_later(timeout, _settle, waiter, None, _Expired())
        try:
            return await waiter
        except _Expired:
            server.withdraw(
                handle,
                RequestTimeoutError(f"server {server.name!r}: no answer within {timeout:g} s"),
            )
            raise RequestError(
                504, f"model {server.name!r}: no answer within {timeout:g} s"
            ) from None
        except asyncio.CancelledError:  # the client cancelled, or the server is stopping
            server.withdraw(handle, RequestCancelledError("the client went away"))
            raise
        except Exception as exc:  # noqa: BLE001 - every failure has its answer
            raise failure_answer(server.name, exc) from None
        finally:
            timer.cancel()


class _Expired(Exception):
    """Set on a request's waiter when its deadline passes."""


def _settle(waiter: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if not waiter.done():
        if error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)


def lookup(models: Mapping[str, Server], name: str, version: str) -> Server:
    """The server for a model name and version ("" or "1"); RequestError 404 otherwise."""
    if version not in ("", "1"):
        raise RequestError(
            404, f"unknown model version {shown_name(version)} (only version 1 exists)"
        )
    server = models.get(name)
    if server is None:
        raise RequestError(
            404, f"unknown model {shown_name(name)} (models: {', '.join(sorted(models)) or 'none'})"
        )
    return server


# -- the wire form <-> oip's ----------------------------------------------------------------------
def decode_infer_request(request: pb.ModelInferRequest, layout):
    """A ``ModelInferRequest`` -> :class:`~pt2interp.serve.oip.InferRequest`, through the JSON
    form oip reads (raw contents become its binary tensor data). RequestError 400 if wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            400,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            f"with raw contents, every input has one",
        )
    entries = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
        }
        parameters = _parameters(tensor.parameters)
        parameters.pop("binary_data_size", None)  # ours to set, from the raw bytes
        what = f"input {shown_name(tensor.name)}"
        given = tensor.contents.ListFields() if tensor.HasField("contents") else []
        if raw:
            if given:
                raise RequestError(400, f"{what} has both contents and raw_input_contents")
            itemsize = _ITEMSIZE.get(tensor.datatype)
            if itemsize is not None and all(d >= 0 for d in tensor.shape):
                count = _count(tensor.shape)
                if len(raw[i]) != count * itemsize:
                    raise RequestError(
                        400,
                        f"{what}: raw_input_contents[{i}] has {len(raw[i])} bytes, but shape "
                        f"{list(tensor.shape)} of {tensor.datatype} takes {count * itemsize}",
                    )
            parameters["binary_data_size"] = len(raw[i])
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if len(given) > 1 or (given and given[0][0].name != field):
                found = ", ".join(f.name for f, _ in given)
                want = f"its values in {field}" if field else "raw_input_contents"
                raise RequestError(
                    400, f"{what}: {tensor.datatype} takes {want}, but contents has {found}"
                )
            if field is None and tensor.datatype in _ITEMSIZE:
                raise RequestError(
                    400, f"{what}: {tensor.datatype} has no typed contents: send raw_input_contents"
                )
            entry["data"] = list(getattr(tensor.contents, field)) if field else []
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    payload: dict[str, Any] = {"inputs": entries}
    if request.id:
        payload["id"] = request.id
    if request.outputs:
        payload["outputs"] = [
            {"name": o.name, "parameters": _output_parameters(o.parameters)}
            for o in request.outputs
        ]
    return decode_payload(payload, layout, b"".join(raw))


def _count(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _parameters(parameters) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in parameters.items()
        if value.WhichOneof("parameter_choice")
    }


def _output_parameters(parameters) -> dict[str, Any]:
    # Every output travels raw here: Triton's clients may say binary_data all the same.
    found = _parameters(parameters)
    found.pop("binary_data", None)
    return found


def encode_infer_response(
    leaves: list[Any], layout, decoded, model_name: str
) -> pb.ModelInferResponse:
    """The output leaves -> a ``ModelInferResponse`` with ``raw_output_contents``."""
    values = dict(zip((s.name for s in layout.outputs), leaves))
    slots = {s.name: s for s in layout.outputs}
    names = [o.name for o in decoded.outputs] if decoded.outputs else list(values)
    response = pb.ModelInferResponse(model_name=model_name, model_version="1", id=decoded.id or "")
    for name in names:
        try:
            entry, raw = encode_value(name, values[name], slots[name], binary=True)
        except RequestError:
            raise  # an output with no OIP form: already worded
        except Exception as exc:  # noqa: BLE001 - outputs that do not fit the recorded layout
            raise RequestError(
                500,
                public_message(
                    f"model {model_name!r}: its outputs could not be encoded: "
                    f"{type(exc).__name__}: {exc}"
                ),
            ) from None
        response.outputs.add(name=name, datatype=entry["datatype"], shape=entry["shape"])
        response.raw_output_contents.append(raw)
    return response


# -- running it ---------------------------------------------------------------------------------
def _models(servers: Server | Iterable[Server] | Mapping[str, Server]) -> dict[str, Server]:
    if isinstance(servers, Server):
        servers = [servers]
    return dict(servers) if isinstance(servers, Mapping) else {s.name: s for s in servers}


async def start_grpc_server(
    servers: Server | Iterable[Server] | Mapping[str, Server],
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    limits: GrpcLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving ``servers`` on ``host:port`` in the running event loop; returns the
    ``grpc.aio`` server and the port it listens on (``port=0``: a free one). The caller stops
    it (``await server.stop(grace)``); the models' servers stay its owner's to shut down."""
    limits = limits or GrpcLimits()
    options = [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(_models(servers), limits), server
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"gRPC cannot listen on {address}: {exc}") from None
    await server.start()
    return server, bound


class GrpcThread:
    """The gRPC server on an event loop of its own, in a background thread: beside uvicorn's
    loop in ``pt2interp serve``, or in a test. Started when constructed; :meth:`stop` gives
    requests under way ``grace`` seconds, then cancels them."""

    def __init__(
        self,
        servers: Server | Iterable[Server] | Mapping[str, Server],
        *,
        host: str = "127.0.0.1",
        port: int = 8081,
        limits: GrpcLimits | None = None,
    ):
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def start():
            try:
                self.server, self.port = await start_grpc_server(
                    servers, host=host, port=port, limits=limits
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the constructing thread
                failure.append(exc)
            finally:
                started.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.create_task(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="pt2interp-grpc", daemon=True)
        self.thread.start()
        started.wait()
        if failure:
            self._close_loop()
            raise failure[0]

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking calls, let those under way finish for ``grace`` seconds, and end."""
        if not self.thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        done.result()
        self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
