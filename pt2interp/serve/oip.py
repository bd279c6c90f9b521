"""The Open Inference Protocol v2 on the wire: infer requests decoded into a model's inputs and
its outputs encoded back, as JSON and with Triton's binary tensor data extension. No web
framework here: :mod:`pt2interp.serve.http` hands over bytes and headers and sends back what
this module returns.

What the spec asks, held strictly (a request that bends it gets a 400 naming the field):

* ``id`` is a string, echoed in the response; ``parameters`` and each tensor's ``parameters``
  are objects.
* ``data`` is the tensor's values in row-major order, flat or nested exactly as ``shape`` says:
  ``[[1, 2], [3, 4]]`` for shape ``[2, 2]``, never ragged, and exactly as many values as the
  shape holds.
* Outputs come back in the order the request names them (all of them, in the model's order,
  when it names none).
* JSON has no NaN or infinity: non-finite floats travel as the strings ``"NaN"``,
  ``"Infinity"`` and ``"-Infinity"`` (as in protobuf's JSON mapping, and ``numpy.array(...,
  dtype=float)`` reads them), in both directions; binary data carries them as they are.

Binary tensor data (Triton's ``binary_tensor_data`` extension): a request whose
``Inference-Header-Content-Length`` header is N has its JSON in the body's first N bytes and the
raw little-endian values of every input with ``"parameters": {"binary_data_size": size}`` after
it, in input order. An output requested with ``"parameters": {"binary_data": true}`` (or every
output, with the request's ``"parameters": {"binary_data_output": true}``) comes back the same
way, its JSON saying ``binary_data_size`` instead of ``data``.

>>> import json, torch, pt2interp
>>> from pt2interp.serve.batching import BatchLayout
>>> model = pt2interp.read_program("fixtures/zoo/dynamic_batch_mlp.pt2").model
>>> layout = BatchLayout.from_program(model)
>>> x = torch.arange(32, dtype=torch.float32).reshape(2, 16)
>>> header = json.dumps({"id": "a", "inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32",
...                      "parameters": {"binary_data_size": 128}}]}).encode()
>>> request = decode_request(header + x.numpy().tobytes(), layout, header_length=len(header))
>>> torch.equal(request.args[0], x), request.id, request.rows
(True, 'a', 2)
>>> body, headers = encode_response(torch.tensor([[1.0, float("nan")]]), layout, request, "mlp")
>>> json.loads(body)["outputs"][0]["data"]
[1.0, 'NaN']
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from pt2interp import jsontext
from pt2interp.errors import InputMismatchError
from pt2interp.serve.batching import DTYPE_OF_OIP, BatchLayout
from pt2interp.serve.server import (
    ModelUnavailableError,
    RequestTimeoutError,
    ServerBusyError,
    ServerClosedError,
    WorkerCrashedError,
)
from pt2interp.signature import CallSignature

# The extension's own header (HTTP header names are case-insensitive; ASGI gives them lowercase).
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]

_FLOAT_TYPES = frozenset({int, float})
# What JSON values each datatype's "data" may hold (bool is an int in Python: excluded on purpose).
_JSON_TYPES: dict[str, frozenset] = (
    {"BOOL": frozenset({bool})}
    | {dt: frozenset({int}) for dt in DTYPE_OF_OIP if dt.startswith(("INT", "UINT"))}
    | {dt: _FLOAT_TYPES for dt in ("FP16", "BF16", "FP32", "FP64")}
)
_NON_FINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TENSOR_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_NAME_SHOWN = 64  # longest name echoed back in an error message
# Absolute paths in error messages are cut to their last part: the server's layout is its own.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[^/\s'\"():,;]+){2,}")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, a message naming the problem, and any
    headers the answer needs (``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says


@dataclass
class InferRequest:
    """A decoded infer request: the model's input leaves (one per input name, in the signature's
    order), what to answer and how. ``args`` and ``kwargs`` build the Python call on demand."""

    leaves: list[Any] = field(repr=False)
    signature: CallSignature = field(repr=False)
    rows: int = 1  # rows along the batch dimension
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output, in the model's order
    binary_output: bool = False  # the request's binary_data_output

    @property
    def args(self) -> tuple:
        return self.signature.unbind(self.leaves)[0]

    @property
    def kwargs(self) -> dict:
        return self.signature.unbind(self.leaves)[1]


def shown_name(name: str) -> str:
    """A name as error messages quote it: cut short, so no client can make us echo megabytes."""
    return (
        repr(name)
        if len(name) <= _NAME_SHOWN
        else repr(name[:_NAME_SHOWN]) + f"... ({len(name)} characters)"
    )


def public_message(message: str) -> str:
    """``message`` with every absolute path cut to its file name.

    >>> public_message("cannot open /srv/models/secret/net.pt2: bad zip")
    'cannot open net.pt2: bad zip'
    """
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], message)


def failure_answer(model: str, exc: Exception) -> RequestError:
    """How a request's failure in ``model``'s server reads in the protocol: its status (HTTP's;
    the gRPC front end maps it to a code), message and headers. REST and gRPC share it."""
    if isinstance(exc, InputMismatchError):
        return RequestError(400, str(exc))
    if isinstance(exc, ServerBusyError):
        return RequestError(429, str(exc), {"retry-after": f"{max(1, round(exc.retry_after_s))}"})
    if isinstance(exc, (ServerClosedError, ModelUnavailableError)):
        return RequestError(503, public_message(str(exc)), {"retry-after": "1"})
    if isinstance(exc, RequestTimeoutError):
        return RequestError(504, str(exc))
    if isinstance(exc, WorkerCrashedError):
        return RequestError(500, public_message(str(exc)))
    # the model's own failure
    return RequestError(500, public_message(f"model {model!r} failed: {type(exc).__name__}: {exc}"))


# -- requests ------------------------------------------------------------------------------------
def decode_request(
    body: bytes, layout: BatchLayout, header_length: int | None = None
) -> InferRequest:
    """An infer request's body (and its ``Inference-Header-Content-Length``, if sent) ->
    :class:`InferRequest`. Raises :class:`RequestError` (400) naming what is wrong."""
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise RequestError(
                400,
                f"Inference-Header-Content-Length {header_length} does not fit a body of "
                f"{len(body)} bytes",
            )
        text, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        text, binary = body, memoryview(b"")
    try:
        payload = jsontext.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        hint = ""
        if header_length is None and (
            isinstance(exc, UnicodeDecodeError) or "Extra data" in str(exc)
        ):
            hint = " (binary tensor data needs the Inference-Header-Content-Length header)"
        raise RequestError(400, f"request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, 'request body must be a JSON object with an "inputs" list')
    return decode_payload(payload, layout, binary)


def decode_payload(
    payload: dict, layout: BatchLayout, binary: memoryview | bytes = b""
) -> InferRequest:
    """An infer request already parsed into its JSON form (``binary``: the binary tensor data
    its inputs' ``binary_data_size`` parameters count) -> :class:`InferRequest`; the part of
    :func:`decode_request` other encodings of the protocol (gRPC) share."""
    binary = memoryview(binary)
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, f'"id" must be a string, got {_json_type(request_id)}')
    parameters = _parameters(payload, "the request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise RequestError(400, "parameters.binary_data_output must be true or false")
    tensors = payload.get("inputs")
    if not isinstance(tensors, list):
        raise RequestError(400, 'request body needs "inputs": a list of tensors')

    slots = {s.name: s for s in layout.inputs}
    given: dict[str, Any] = {}
    offset = 0
    for i, entry in enumerate(tensors):
        if not isinstance(entry, dict):
            raise RequestError(
                400, f"inputs[{i}] must be an object with name, shape, datatype and data"
            )
        name = entry.get("name")
        if not isinstance(name, str):
            raise RequestError(400, f'inputs[{i}] has no "name" string')
        slot = slots.get(name)
        if slot is None or slot.kind not in ("tensor", "int"):
            known = [s.name for s in layout.inputs if s.kind in ("tensor", "int")]
            raise RequestError(
                400, f"the model has no input {shown_name(name)} (inputs: {', '.join(known)})"
            )
        if name in given:
            raise RequestError(400, f"input {name!r} is given twice")
        given[name], offset = _decode_tensor(entry, slot, binary, offset)
    if offset != len(binary):
        raise RequestError(
            400,
            f"the body has {len(binary) - offset} bytes of binary data after the inputs' "
            f"binary_data_size ({offset} bytes in all)",
        )

    leaves = []
    for slot in layout.inputs:
        if slot.name in given:
            leaves.append(given[slot.name])
        elif slot.kind == "constant":
            leaves.append(slot.constant)
        else:
            raise RequestError(
                400, f"missing input {slot.name!r} ({slot.datatype} {slot.oip_shape})"
            )
    return InferRequest(
        leaves,
        layout.signature,
        rows=layout.rows_of(leaves),
        id=request_id,
        outputs=_requested_outputs(payload.get("outputs"), layout),
        binary_output=binary_output,
    )


def _requested_outputs(requested: Any, layout: BatchLayout) -> list[RequestedOutput] | None:
    if requested is None:
        return None
    if not isinstance(requested, list):
        raise RequestError(400, '"outputs" must be a list of objects with a "name"')
    known = {s.name for s in layout.outputs}
    wanted, seen = [], set()
    for i, entry in enumerate(requested):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise RequestError(400, f'outputs[{i}] must be an object with a "name" string')
        name = entry["name"]
        if name not in known:
            raise RequestError(
                400,
                f"the model has no output {shown_name(name)} "
                f"(outputs: {', '.join(s.name for s in layout.outputs)})",
            )
        if name in seen:
            raise RequestError(400, f"output {name!r} is requested twice")
        seen.add(name)
        parameters = _parameters(entry, f"output {name!r}")
        unknown = set(parameters) - {"binary_data"}
        if unknown:
            raise RequestError(
                400,
                f"output {name!r}: unsupported parameters {sorted(unknown)} "
                f"(supported: binary_data)",
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise RequestError(
                400, f"output {name!r}: parameters.binary_data must be true or false"
            )
        wanted.append(RequestedOutput(name, binary))
    return wanted


def _parameters(entry: dict, what: str) -> dict:
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(400, f'{what}: "parameters" must be an object')
    return parameters


def _decode_tensor(entry: dict, slot, binary: memoryview, offset: int) -> tuple[Any, int]:
    name = slot.name
    extra = set(entry) - _TENSOR_FIELDS
    if extra:
        raise RequestError(400, f"input {name!r}: unknown fields {sorted(extra)}")
    for key in ("shape", "datatype"):
        if key not in entry:
            raise RequestError(400, f"input {name!r} has no {key!r}")
    datatype, shape = entry["datatype"], entry["shape"]
    if not isinstance(datatype, str) or datatype not in _JSON_TYPES:
        supported = ", ".join(sorted(_JSON_TYPES))
        raise RequestError(
            400, f"input {name!r}: unknown datatype {datatype!r} (supported: {supported})"
        )
    if datatype != slot.datatype:
        raise RequestError(
            400, f"input {name!r}: datatype {datatype} does not match the model's {slot.datatype}"
        )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(
            400,
            f"input {name!r}: shape must be a list of non-negative integers, got {_short(shape)}",
        )
    count = math.prod(shape)
    if slot.kind == "int" and count != 1:
        raise RequestError(400, f"input {name!r} is a single integer: shape [1], got {shape}")
    dtype = getattr(torch, DTYPE_OF_OIP[datatype])
    parameters = _parameters(entry, f"input {name!r}")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise RequestError(
                400, f'input {name!r} has both "data" and parameters.binary_data_size'
            )
        itemsize = torch.empty((), dtype=dtype).element_size()
        if type(size) is not int or size != count * itemsize:
            raise RequestError(
                400,
                f"input {name!r}: binary_data_size {_short(size)} is not {count * itemsize} "
                f"({count} {datatype} values of {itemsize} bytes)",
            )
        if offset + size > len(binary):
            raise RequestError(
                400,
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)",
            )
        raw = bytearray(
            binary[offset : offset + size]
        )  # a copy of our own: torch writes to it freely
        tensor = torch.frombuffer(raw, dtype=dtype) if size else torch.empty(0, dtype=dtype)
        value = int(tensor[0]) if slot.kind == "int" else tensor.reshape(shape)
        return value, offset + size
    if "data" not in entry:
        raise RequestError(400, f"input {name!r} has no 'data' (nor parameters.binary_data_size)")
    flat = _flat_values(entry["data"], shape, name)
    types = set(map(type, flat))
    allowed = _JSON_TYPES[datatype]
    if not types <= allowed:
        if allowed is _FLOAT_TYPES and str in types:
            flat = _non_finite(flat, name)
            types.discard(str)
        if not types <= allowed:
            bad = next(v for v in flat if type(v) not in allowed)
            want = (
                "true or false"
                if datatype == "BOOL"
                else "integers"
                if allowed == {int}
                else "numbers"
            )
            raise RequestError(
                400, f"input {name!r}: {datatype} data must be {want}, found {_short(bad)}"
            )
    if slot.kind == "int":
        return int(flat[0]), offset
    try:
        return torch.tensor(flat, dtype=dtype).reshape(shape), offset
    except (RuntimeError, OverflowError, TypeError, ValueError) as exc:
        raise RequestError(400, f"input {name!r}: data does not fit {datatype}: {exc}") from None


def _flat_values(data: Any, shape: list[int], name: str) -> list:
    """``data`` as a flat list: flat already, or nested exactly as ``shape`` says."""
    if not isinstance(data, list):
        raise RequestError(
            400, f"input {name!r}: data must be a list (flat, row-major, or nested as the shape)"
        )
    count = math.prod(shape)
    if list not in set(map(type, data)):
        if len(data) != count:
            raise RequestError(
                400, f"input {name!r}: shape {shape} holds {count} values but data has {len(data)}"
            )
        return data
    level = [data]
    for depth, size in enumerate(shape):
        below: list = []
        for item in level:
            if type(item) is not list or len(item) != size:
                got = f"{len(item)} entries" if type(item) is list else _json_type(item)
                raise RequestError(
                    400,
                    f"input {name!r}: nested data does not follow shape {shape}: at depth "
                    f"{depth} a list of {size} was expected, found {got}",
                )
            below.extend(item)
        level = below
    if list in set(map(type, level)):
        raise RequestError(400, f"input {name!r}: nested data is deeper than shape {shape}")
    return level


def _non_finite(flat: list, name: str) -> list:
    out = []
    for v in flat:
        if type(v) is str:
            try:
                v = _NON_FINITE_IN[v]
            except KeyError:
                raise RequestError(
                    400,
                    f"input {name!r}: the only strings float data may hold are "
                    f'"NaN", "Infinity" and "-Infinity", found {_short(v)}',
                ) from None
        out.append(v)
    return out


# -- responses -----------------------------------------------------------------------------------
def encode_response(
    out: Any,
    layout: BatchLayout,
    request: InferRequest,
    model_name: str,
    *,
    leaves: list[Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The model's result -> (body, headers): JSON, or JSON and binary data when any output is
    asked for in binary. ``leaves``: its output leaves, where the caller has them (``out`` is not
    looked at then)."""
    if leaves is None:
        leaves = layout.output_leaves(out)
    leaves = dict(zip((s.name for s in layout.outputs), leaves))
    slots = {s.name: s for s in layout.outputs}
    wanted = request.outputs or [RequestedOutput(s.name) for s in layout.outputs]
    described, chunks = [], []
    for want in wanted:
        binary = request.binary_output if want.binary is None else want.binary
        entry, raw = encode_value(want.name, leaves[want.name], slots[want.name], binary)
        described.append(entry)
        if raw is not None:
            chunks.append(raw)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": "1"}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = described
    try:
        header = dumps(answer)
    except ValueError:  # NaN or an infinity: JSON has neither (checked only when it happens)
        for entry in described:
            if "data" in entry:
                entry["data"] = [
                    v if not isinstance(v, float) or math.isfinite(v) else _non_finite_text(v)
                    for v in entry["data"]
                ]
        header = dumps(answer)
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def encode_value(name: str, value: Any, slot, binary: bool) -> tuple[dict, bytes | None]:
    """One output leaf -> its JSON entry and, when ``binary``, its raw little-endian bytes."""
    if isinstance(value, torch.Tensor):
        # each torch call costs microseconds, a good part of a small answer: only those needed
        t = value if value.device.type == "cpu" else value.to("cpu")
        entry: dict[str, Any] = {"name": name, "datatype": slot.datatype, "shape": list(t.shape)}
        if binary:
            raw = (
                t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                if t.numel()
                else b""
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            return entry, raw
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        entry["data"] = t.reshape(-1).tolist()
        return entry, None
    if isinstance(value, (bool, int, float)):
        datatype = (
            "BOOL" if isinstance(value, bool) else "INT64" if isinstance(value, int) else "FP64"
        )
        if binary:
            raw = torch.tensor([value], dtype=getattr(torch, DTYPE_OF_OIP[datatype])).view(
                torch.uint8
            )
            return (
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": [1],
                    "parameters": {"binary_data_size": raw.numel()},
                },
                raw.numpy().tobytes(),
            )
        if isinstance(value, float) and not math.isfinite(value):
            value = _non_finite_text(value)
        return {"name": name, "datatype": datatype, "shape": [1], "data": [value]}, None
    raise RequestError(500, f"output {name!r} is a {type(value).__name__}, which has no OIP form")


def _non_finite_text(value: float) -> str:
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def dumps(content: Any) -> bytes:
    """Compact JSON; refuses NaN and infinities, which no strict parser reads."""
    return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."
