"""How a program's inputs and outputs line up along a batch dimension, and the tensor work of
dynamic batching: validating requests, grouping compatible ones, stacking, padding, splitting.

Everything here is derived from the program's recorded metadata, never from running it:

* **The batch dimension** of a program with dynamic shapes is the symbol at dim 0 of the first
  input that has one (else the first symbol found in any input); each tensor input is batched
  along the dim that carries that symbol, and each output along the dim that carries it.
* A program with **static** shapes is batched along dim 0 when every tensor output starts with
  the same size ``B`` as the first input: inputs whose dim 0 is ``B`` are batched, runs always
  hold exactly ``B`` rows (short runs are padded, results sliced back), and a request larger
  than the run is split.
* Programs where mixing requests would change results are never batched: those that write
  buffers or inputs (a batch of three would advance a counter once, not three times), those
  with data-dependent control flow (``torch.cond`` on ``x.sum()`` looks at every row), and
  those with an output that has no batch dimension (it would depend on the whole batch).

>>> import pt2interp
>>> model = pt2interp.read_program("fixtures/zoo/dynamic_batch_mlp.pt2").model
>>> layout = BatchLayout.from_program(model)
>>> layout.batchable, layout.batch_symbol, layout.max_rows, [s.batch_axis for s in layout.inputs]
(True, 's77', 1024, [0])
>>> [(s.name, s.datatype, s.oip_shape) for s in layout.inputs]
[('x', 'FP32', [-1, 16])]
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from pt2interp.errors import InputMismatchError
from pt2interp.input_checks import RowCheck, moved
from pt2interp.kinds import STATE_INPUT_KINDS, ArgKind, InputKind
from pt2interp.schema import SymExpr, TensorMeta
from pt2interp.signature import CallSignature
from pt2interp.treespec import TreeSpec
from pt2interp.weights import torch_dtype

# torch dtype name (as archives record it) -> Open Inference Protocol datatype
OIP_DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "bfloat16": "BF16",
    "float32": "FP32",
    "float64": "FP64",
}
DTYPE_OF_OIP: dict[str, str] = {v: k for k, v in OIP_DATATYPES.items()}

# Unbatched tensor inputs up to this size are compared by content when grouping requests
# (a shared ``scale`` of 4 floats); larger ones only batch with the very same tensor object.
_HASHED_INPUT_BYTES = 1 << 16


@dataclass(frozen=True)
class InputSlot:
    """One leaf of the call's inputs: ``kind`` is ``tensor``, ``int``, ``constant`` or ``other``."""

    name: str
    kind: str
    meta: TensorMeta | None = None
    batch_axis: int | None = None
    constant: Any = None

    @property
    def dtype(self) -> torch.dtype | None:
        return torch_dtype(self.meta.dtype) if self.meta is not None else None

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol datatype name (``FP32``, ``INT64``, ...)."""
        if self.kind == "int":
            return "INT64"
        return OIP_DATATYPES.get(self.meta.dtype, self.meta.dtype.upper()) if self.meta else "BYTES"

    @property
    def oip_shape(self) -> list[int]:
        """Sizes with -1 for every dimension that is not fixed."""
        if self.kind == "int":
            return [1]
        return _oip_shape(self.meta)


@dataclass(frozen=True)
class OutputSlot:
    """One leaf of the call's outputs."""

    name: str
    meta: TensorMeta | None
    batch_axis: int | None = None

    @property
    def datatype(self) -> str:
        return OIP_DATATYPES.get(self.meta.dtype, self.meta.dtype.upper()) if self.meta else "BYTES"

    @property
    def oip_shape(self) -> list[int]:
        return _oip_shape(self.meta)


def _oip_shape(meta: TensorMeta | None) -> list[int]:
    if meta is None:
        return [-1]
    return [s if isinstance(s, int) else -1 for s in meta.sizes]


@dataclass(slots=True)
class PreparedRequest:
    """A request's input leaves after validation, with what batching needs to know about it.

    ``rows`` is the request's extent along the batch dimension (1 where there is none);
    requests with equal ``group_key`` may share a run.
    """

    leaves: list[Any]
    rows: int
    group_key: Any


class Chunk:
    """Rows ``start:stop`` of one request, scheduled into one run (``whole``: all of its rows)."""

    __slots__ = ("index", "owner", "prepared", "rows", "start", "stop", "whole")

    def __init__(
        self, owner: Any, prepared: PreparedRequest, start: int, stop: int, index: int = 0
    ):
        self.owner = owner
        self.prepared = prepared
        self.start = start
        self.stop = stop
        self.index = index  # position among the owner's chunks
        self.rows = stop - start
        self.whole = self.rows == prepared.rows

    def __repr__(self) -> str:
        return f"Chunk({self.owner!r}, rows {self.start}:{self.stop} of {self.prepared.rows})"


@dataclass
class BatchLayout:
    """The program's batch dimension (see the module docstring), over its call signature: names,
    binding and checks come from :class:`~pt2interp.signature.CallSignature`."""

    signature: CallSignature
    inputs: list[InputSlot]
    outputs: list[OutputSlot]
    batch_symbol: str | None = None
    static_rows: int | None = None  # static programs: every run has exactly this many rows
    min_rows: int = 1
    max_rows: int | None = None
    batchable: bool = False
    reason: str = ""
    # With CUDA graphs: the run sizes graphs were captured for; a run is padded up to the
    # smallest that holds it (rows are independent, so padding changes no real row's result)
    buckets: tuple[int, ...] = ()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_program(cls, model, signature: CallSignature | None = None) -> BatchLayout:
        """Read the layout from an ``ExportedProgramModel`` (``program.model``); ``signature``:
        its call signature, where the caller has it."""
        signature = signature if signature is not None else CallSignature.from_model(model)
        slots = [InputSlot(s.name, s.kind, s.meta, None, s.constant) for s in signature.inputs]
        outputs = [OutputSlot(o.name, o.meta) for o in signature.outputs]
        layout = cls(signature, slots, outputs)
        layout._find_batch_dimension(model)
        return layout

    @property
    def in_spec(self) -> TreeSpec | None:
        return self.signature.in_spec

    @property
    def out_spec(self) -> TreeSpec | None:
        return self.signature.out_spec

    @property
    def n_positional(self) -> int | None:
        return self.signature.n_positional

    @property
    def arg_names(self) -> list[str]:
        return self.signature.arg_names

    def _find_batch_dimension(self, model) -> None:
        reason = _unbatchable_program(model)
        if reason:
            self._refuse(reason)
            return
        tensors = [
            s for s in self.inputs if s.kind == "tensor" and s.meta is not None and s.meta.sizes
        ]
        if not tensors:
            self._refuse("no tensor input has a dimension to batch along")
            return
        if any(o.meta is None for o in self.outputs):
            self._refuse("an output is not a tensor")
            return
        symbol = _batch_symbol(tensors)
        if symbol is not None:
            self._use_symbol(symbol, model)
        else:
            self._use_static_dim0(tensors)

    def _use_symbol(self, symbol: str, model) -> None:
        self.batch_symbol = symbol
        rc = model.range_constraints.get(symbol)
        self.min_rows = max(1, rc.min_val) if rc is not None and rc.min_val is not None else 1
        self.max_rows = rc.max_val if rc is not None and rc.max_val is not None else None
        self.inputs = [
            _with_axis(s, _axis_of(s.meta, symbol)) if s.kind == "tensor" else s
            for s in self.inputs
        ]
        outs = []
        for o in self.outputs:
            axis = _axis_of(o.meta, symbol)
            if axis is None:
                self._refuse(
                    f"output {o.name!r} has no batch dimension ({symbol}): it depends on the "
                    f"whole batch"
                )
                return
            outs.append(OutputSlot(o.name, o.meta, axis))
        self.outputs = outs
        self.batchable = True

    def _use_static_dim0(self, tensors: list[InputSlot]) -> None:
        first = tensors[0].meta.sizes[0]
        if not isinstance(first, int) or first < 1:
            self._refuse("the first input's dim 0 is neither static nor a plain symbol")
            return
        for o in self.outputs:
            if not o.meta.sizes or o.meta.sizes[0] != first:
                self._refuse(
                    f"static shapes, and output {o.name!r} does not start with the inputs' "
                    f"dim 0 ({first})"
                )
                return
        self.inputs = [
            _with_axis(s, 0)
            if s.kind == "tensor"
            and s.meta is not None
            and s.meta.sizes
            and s.meta.sizes[0] == first
            else s
            for s in self.inputs
        ]
        self.outputs = [OutputSlot(o.name, o.meta, 0) for o in self.outputs]
        self.static_rows = self.min_rows = self.max_rows = first
        self.batchable = True

    def _refuse(self, reason: str) -> None:
        self.batchable = False
        self.reason = reason
        self.inputs = [_with_axis(s, None) for s in self.inputs]
        self.outputs = [OutputSlot(o.name, o.meta, None) for o in self.outputs]

    # -- calling convention (the signature's) -------------------------------------------------
    def bind(self, args: tuple, kwargs: dict) -> list[Any]:
        """The call's input leaves in graph order (positional inputs may be passed by name)."""
        return self.signature.bind(args, kwargs)

    def unbind(self, leaves: list[Any]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for the program, from input leaves in graph order."""
        return self.signature.unbind(leaves)

    def output_leaves(self, out: Any) -> list[Any]:
        return self.signature.output_leaves(out)

    def build_output(self, leaves: list[Any]) -> Any:
        """The caller's output structure (tuple, dict, ...) from output leaves."""
        return self.signature.build_output(leaves)

    # -- requests --------------------------------------------------------------------------------
    def check_devices(self, leaves: list[Any], device: torch.device) -> list[Any]:
        """Move tensors to ``device``; an input that cannot get there fails with the reason."""
        return self.signature.moved_to(leaves, device)

    def rows_of(self, leaves: list[Any]) -> int:
        """Rows along the batch dimension (1 when the program has none to speak of)."""
        for slot, value in zip(self.inputs, leaves):
            if (
                slot.batch_axis is not None
                and isinstance(value, torch.Tensor)
                and value.dim() > slot.batch_axis
            ):
                return int(value.shape[slot.batch_axis])
        return 1

    def prepare(self, leaves: list[Any], device: torch.device | None = None) -> PreparedRequest:
        """Validate leaves for batching: dtypes, ranks and every dimension but the batch one;
        with ``device``, tensors elsewhere are moved there first (see :meth:`check_devices`).

        Raises :class:`~pt2interp.errors.InputMismatchError` naming the input and dimension.
        """
        # Runs for every request, in the caller's thread: kept to the fewest Python steps.
        rows = None
        leaves = list(leaves)
        key: list[Any] = []
        env: dict[str, int] = {}
        for i, (slot, check) in enumerate(self._slot_checks):
            value = leaves[i]
            if check is None:
                key.append(_untyped_key(slot, value))
                continue
            if not isinstance(value, torch.Tensor):
                raise InputMismatchError(
                    f"input {slot.name!r}: expected a tensor, got {type(value).__name__}"
                )
            if device is not None and value.device != device:
                value = leaves[i] = moved(slot.name, value, device)
            shape = check.validate(value, env)
            axis = slot.batch_axis
            if axis is None:
                key.append(("shared", value.dtype, shape, _content_key(value)))
                continue
            n = shape[axis]
            if rows is None:
                rows = n
            elif n != rows:
                raise InputMismatchError(
                    f"input {slot.name!r} dim {axis}: batch size {n}, but other inputs have {rows}"
                )
            # every other dim is fixed (and was just checked) unless the input has symbols
            key.append(
                check.batched_key or ("batched", value.dtype, shape[:axis] + shape[axis + 1 :])
            )
        if rows is not None and rows < 1:
            raise InputMismatchError("the request holds no rows (batch dimension of size 0)")
        return PreparedRequest(leaves, rows if rows is not None else 1, tuple(key))

    def prepare_plain(
        self, args: tuple | list, kwargs: dict, device: torch.device
    ) -> PreparedRequest | None:
        """:meth:`prepare` for the most common call, ``f(x)`` with one tensor batched along dim 0
        and static other dims, already on ``device``, in a few steps; None for anything else
        (:meth:`prepare` then decides, and names any problem). ``args`` may be the leaves."""
        plain = self._plain_input
        if plain is None or kwargs or len(args) != 1:
            return None
        x = args[0]
        dtype, rank, tail, key = plain
        if not isinstance(x, torch.Tensor) or x.dtype != dtype or x.device != device:
            return None
        shape = x.shape
        if len(shape) != rank or shape[1:] != tail or shape[0] < 1:
            return None
        return PreparedRequest([x], shape[0], key)

    @functools.cached_property
    def _plain_input(self) -> tuple | None:
        if not self.batchable or len(self.inputs) != 1 or not self.signature._flat_positional:
            return None
        slot, check = self._slot_checks[0]
        if check is None or slot.batch_axis != 0 or check.batched_key is None:
            return None
        return check.dtype, check.rank, torch.Size(check.batched_key[2]), (check.batched_key,)

    @functools.cached_property
    def _slot_checks(self) -> list[tuple[InputSlot, RowCheck | None]]:
        # Built once: prepare() runs for every request, in the caller's thread.
        return [
            (
                s,
                RowCheck(s.name, s.meta, s.batch_axis)
                if s.kind == "tensor" and s.meta is not None
                else None,
            )
            for s in self.inputs
        ]

    # -- runs ------------------------------------------------------------------------------------
    @property
    def rows_per_run_limit(self) -> int | None:
        """The most rows one run may hold, from the program alone (None: unbounded)."""
        return self.static_rows if self.static_rows is not None else self.max_rows

    def stack(self, chunks: list[Chunk]) -> tuple[list[Any], int]:
        """Input leaves for one run over ``chunks`` (same group key), and the padding rows added.

        Rows are concatenated in chunk order along each input's batch dim; a run shorter than the
        program allows (a static batch, or a dynamic one with a minimum) is padded by repeating
        its last row, which keeps padded values valid for the program (indices stay in range).
        """
        rows = sum(c.rows for c in chunks)
        target = max(rows, self.min_rows if self.static_rows is None else self.static_rows)
        target = next((b for b in self.buckets if b >= target), target)
        pad = target - rows
        first = chunks[0].prepared.leaves
        out = []
        for i, slot in enumerate(self.inputs):
            axis = slot.batch_axis
            if axis is None:
                out.append(first[i])  # equal in every chunk: the group key says so
                continue
            pieces = [
                c.prepared.leaves[i]
                if c.whole
                else c.prepared.leaves[i].narrow(axis, c.start, c.rows)
                for c in chunks
            ]
            if pad:
                last = pieces[-1].narrow(axis, pieces[-1].shape[axis] - 1, 1)
                shape = list(last.shape)
                shape[axis] = pad
                pieces.append(last.expand(shape))
            out.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=axis))
        return out, pad

    def example_leaves(self, rows: int | None, device: torch.device) -> list[Any]:
        """Input leaves of the recorded dtypes and example sizes (the batch dimension set to
        ``rows`` where given), zeros: for capturing a run's graph before any request comes.
        Constant inputs take their recorded value; other non-tensor inputs their example."""
        out = []
        for slot in self.inputs:
            if slot.kind != "tensor" or slot.meta is None:
                out.append(slot.constant if slot.constant is not None or slot.kind != "int" else 1)
                continue
            shape = [d if d >= 0 else 1 for d in slot.meta.example_sizes(unknown=1)]
            if rows is not None and slot.batch_axis is not None:
                shape[slot.batch_axis] = rows
            out.append(torch.zeros(shape, dtype=slot.dtype, device=device))
        return out

    def split(
        self, out_leaves: list[Any], chunks: list[Chunk], padded_rows: int
    ) -> list[list[Any]]:
        """Each chunk's share of one run's output leaves, in chunk order."""
        total = sum(c.rows for c in chunks) + padded_rows
        shares: list[list[Any]] = [[] for _ in chunks]
        for slot, value in zip(self.outputs, out_leaves):
            axis = slot.batch_axis
            if (
                not isinstance(value, torch.Tensor)
                or axis is None
                or value.dim() <= axis
                or value.shape[axis] != total
            ):
                got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise BatchSplitError(
                    f"output {slot.name!r} is {got}; expected {total} rows along dim {axis}"
                )
            if len(chunks) == 1 and padded_rows == 0:
                shares[0].append(value)
                continue
            sizes = [c.rows for c in chunks] + ([padded_rows] if padded_rows else [])
            for share, part in zip(shares, value.split_with_sizes(sizes, axis)):
                share.append(part)
        return shares

    def join(self, pieces: list[list[Any]]) -> list[Any]:
        """One request's output leaves from the shares of its chunks (in chunk order)."""
        if len(pieces) == 1:
            return pieces[0]
        return [
            torch.cat([p[i] for p in pieces], dim=slot.batch_axis)
            for i, slot in enumerate(self.outputs)
        ]

    def describe(self) -> dict[str, Any]:
        """Inputs and outputs as the Open Inference Protocol lists them, plus the batch layout."""
        return {
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": s.oip_shape}
                for s in self.inputs
                if s.kind in ("tensor", "int")
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": s.oip_shape} for s in self.outputs
            ],
            "batching": {
                "possible": self.batchable,
                "reason": self.reason or None,
                "symbol": self.batch_symbol,
                "static_rows": self.static_rows,
                "min_rows": self.min_rows,
                "max_rows": self.max_rows,
            },
        }


class BatchSplitError(RuntimeError):
    """A run's outputs did not have the batch dimension the layout promised."""


def chunk_request(owner: Any, prepared: PreparedRequest, rows_per_run: int) -> list[Chunk]:
    """Cut a request into chunks of at most ``rows_per_run`` rows (a large request is split).

    >>> [(c.start, c.stop) for c in chunk_request("r", PreparedRequest([], 5, ()), 2)]
    [(0, 2), (2, 4), (4, 5)]
    """
    if prepared.rows <= rows_per_run:
        return [Chunk(owner, prepared, 0, prepared.rows)]
    step = max(1, rows_per_run)
    chunks = []
    for i, start in enumerate(range(0, prepared.rows, step)):
        chunks.append(Chunk(owner, prepared, start, min(start + step, prepared.rows), i))
    return chunks


def plan_runs(chunks: list[Chunk], rows_per_run: int) -> list[list[Chunk]]:
    """Group chunks by their request's group key and pack each group into runs of at most
    ``rows_per_run`` rows, first come first served (order within a group is kept).

    >>> a, b = PreparedRequest([], 3, "k"), PreparedRequest([], 2, "other")
    >>> runs = plan_runs(chunk_request("a", a, 4) + chunk_request("b", b, 4)
    ...                  + chunk_request("c", PreparedRequest([], 2, "k"), 4), 4)
    >>> [[(c.owner, c.rows) for c in run] for run in runs]
    [[('a', 3)], [('b', 2)], [('c', 2)]]
    """
    groups: dict[Any, list[list[Chunk]]] = {}
    filled: dict[Any, int] = {}  # rows in each group's last run
    for chunk in chunks:
        key = chunk.prepared.group_key
        runs = groups.get(key)
        if runs is None or filled[key] + chunk.rows > rows_per_run:
            if runs is None:
                runs = groups[key] = []
            runs.append([])
            filled[key] = 0
        runs[-1].append(chunk)
        filled[key] += chunk.rows
    # A group's later runs go after every group's first run: no group waits behind another's tail.
    ordered = [runs[0] for runs in groups.values()]
    ordered += [run for runs in groups.values() for run in runs[1:]]
    return [run for run in ordered if run]


def _untyped_key(slot: InputSlot, value: Any):
    """The group-key part of an input that is not a tensor with known metadata."""
    if slot.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputMismatchError(
                f"input {slot.name!r}: expected an int, got {type(value).__name__}"
            )
        return ("int", value)
    return ("object", _identity_key(value))


def _content_key(value: torch.Tensor):
    """Equal tensors give equal keys (small ones by content; large ones by identity)."""
    nbytes = value.numel() * value.element_size()
    if nbytes > _HASHED_INPUT_BYTES:
        return ("id", id(value))
    raw = value.detach().to("cpu").contiguous().reshape(-1)
    data = raw.view(torch.uint8).numpy().tobytes() if raw.numel() else b""
    return ("sha1", hashlib.sha1(data).hexdigest())


def _identity_key(value: Any):
    try:
        hash(value)
        return ("value", type(value).__name__, value)
    except TypeError:
        return ("id", id(value))


def _with_axis(slot: InputSlot, axis: int | None) -> InputSlot:
    return InputSlot(slot.name, slot.kind, slot.meta, axis, slot.constant)


def _axis_of(meta: TensorMeta | None, symbol: str) -> int | None:
    if meta is None:
        return None
    for d, s in enumerate(meta.sizes):
        if isinstance(s, SymExpr) and s.expr.as_symbol() == symbol:
            return d
    return None


def _batch_symbol(tensors: list[InputSlot]) -> str | None:
    for slot in tensors:
        first = slot.meta.sizes[0]
        if isinstance(first, SymExpr) and first.expr.as_symbol():
            return first.expr.as_symbol()
    for slot in tensors:
        for s in slot.meta.sizes:
            if isinstance(s, SymExpr) and s.expr.as_symbol():
                return s.expr.as_symbol()
    return None


def _unbatchable_program(model) -> str:
    """Why requests must not share a run of this program ("" when they may)."""
    specs = model.signature
    if any(s.kind.mutates for s in specs.output_specs):
        return "the program writes buffers or inputs: batching would change how often it does"
    state_names = {
        s.arg.value.name
        for s in specs.input_specs
        if s.kind in STATE_INPUT_KINDS and s.arg.kind is ArgKind.TENSOR
    }
    user_names = {
        s.arg.value.name
        for s in specs.input_specs
        if s.kind is InputKind.USER_INPUT and s.arg.kind is ArgKind.TENSOR
    }
    for node in model.graph.iter_nodes():
        target = node.target or ""
        if target.startswith("torch.ops.higher_order."):
            return (
                f"data-dependent control flow ({target.rsplit('.', 1)[-1]}) may look at every row"
            )
        op = target.split(".")[-2] if target.count(".") >= 2 else ""
        if op.endswith("_") and not op.startswith("_") and node.inputs:
            first = node.inputs[0].arg
            if first.kind is ArgKind.TENSOR and first.value.name in state_names | user_names:
                return f"the program writes {first.value.name!r} in place ({target})"
    return ""


def capture_buckets(rows_per_run: int) -> tuple[int, ...]:
    """The run sizes to capture graphs for: powers of two below ``rows_per_run``, and it.

    >>> capture_buckets(1), capture_buckets(16), capture_buckets(12)
    ((1,), (1, 2, 4, 8, 16), (1, 2, 4, 8, 12))
    """
    sizes, b = [], 1
    while b < rows_per_run:
        sizes.append(b)
        b *= 2
    return (*sizes, rows_per_run)
