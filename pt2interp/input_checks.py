"""Checks of a call's input leaves against the program's recorded metadata: dtype, rank, static
sizes, symbol ranges and consistency, ints being ints, and the device a tensor is on.

:class:`LeafChecks` is the whole check a program makes before it runs
(:meth:`pt2interp.signature.CallSignature.check`); :class:`RowCheck` is the part one request
can pass on its own before the server stacks it with others (every dim but the batch one).

>>> import torch, pt2interp
>>> from pt2interp.signature import CallSignature
>>> model = pt2interp.read_program("fixtures/zoo/dynamic_batch_mlp.pt2").model
>>> sig = CallSignature.from_model(model)
>>> sig.check([torch.zeros(3, 16)])[0].shape
torch.Size([3, 16])
>>> sig.check([torch.zeros(3, 8)])
Traceback (most recent call last):
...
pt2interp.errors.InputMismatchError: input 'x' dim 1: expected 16, got 8 (shape [3, 8])
"""

from __future__ import annotations

from typing import Any

import torch

from pt2interp.errors import InputMismatchError
from pt2interp.schema import SymExpr, TensorMeta
from pt2interp.signature import InputLeaf
from pt2interp.weights import torch_dtype


class LeafChecks:
    """Every input leaf's check, with the symbol ranges they share."""

    __slots__ = ("checks", "names", "ranges")

    def __init__(self, inputs: list[InputLeaf], ranges: dict[str, tuple[int | None, int | None]]):
        self.checks = [LeafCheck(leaf) for leaf in inputs]
        self.names = [leaf.name for leaf in inputs]
        self.ranges = ranges

    def check(self, leaves: list[Any], device: torch.device | None) -> list[Any]:
        if len(leaves) != len(self.checks):
            raise InputMismatchError(f"expected {len(self.checks)} inputs, got {len(leaves)}")
        env: dict[str, int] = {}
        ranges = self.ranges
        out = []
        for check, value in zip(self.checks, leaves):
            value = check(value, env, ranges)
            if device is not None and isinstance(value, torch.Tensor) and value.device != device:
                value = value.to(device)
            out.append(value)
        return out

    def moved_to(self, leaves: list[Any], device: torch.device) -> list[Any]:
        return [
            moved(name, value, device)
            if isinstance(value, torch.Tensor) and value.device != device
            else value
            for name, value in zip(self.names, leaves)
        ]


class LeafCheck:
    """Checks one input leaf: a tensor's dtype, rank, sizes and dim ranges; an int's type."""

    __slots__ = ("dtype", "kind", "label", "meta")

    def __init__(self, leaf: InputLeaf):
        self.label = leaf.name
        self.kind = leaf.kind
        self.meta = leaf.meta if leaf.kind == "tensor" else None
        self.dtype = torch_dtype(self.meta.dtype) if self.meta is not None else None

    def __call__(self, value, env: dict, ranges: dict):
        if self.kind == "int":
            if isinstance(value, torch.Tensor) or not isinstance(value, int):
                raise InputMismatchError(
                    f"input {self.label!r}: expected an int, got {type(value).__name__}"
                )
            return value
        if self.kind != "tensor":
            return value
        if not isinstance(value, torch.Tensor):
            raise InputMismatchError(
                f"input {self.label!r}: expected a tensor, got {type(value).__name__}"
            )
        meta = self.meta
        if meta is None:
            return value
        if value.dtype != self.dtype:
            raise InputMismatchError(
                f"input {self.label!r}: expected dtype {self.dtype}, got {value.dtype}"
            )
        if value.dim() != len(meta.sizes):
            raise InputMismatchError(
                f"input {self.label!r}: expected {len(meta.sizes)} dimensions "
                f"{sizes_text(meta.sizes)}, got {value.dim()} {list(value.shape)}"
            )
        shape = value.shape
        deferred = []
        for d, expected in enumerate(meta.sizes):
            got = shape[d]
            if isinstance(expected, int):
                if got != expected:
                    raise InputMismatchError(
                        f"input {self.label!r} dim {d}: expected {expected}, got {got} "
                        f"(shape {list(shape)})"
                    )
                continue
            sym = expected.expr.as_symbol()
            if sym is None:
                deferred.append((d, expected, got))
                continue
            lo, hi = ranges.get(sym, (None, None))
            if (lo is not None and got < lo) or (hi is not None and got > hi):
                raise InputMismatchError(
                    f"input {self.label!r} dim {d}: expected {sym} in {_range_text(lo, hi)}, "
                    f"got {got}"
                )
            bound = env.setdefault(sym, got)
            if bound != got:
                raise InputMismatchError(
                    f"input {self.label!r} dim {d}: {sym} is {bound} elsewhere in the inputs, "
                    f"got {got}"
                )
        for d, expected, got in deferred:
            try:
                want = expected.expr.evaluate(env)
            except KeyError:
                continue  # depends on a symbol bound by a later input: torch checks this lazily too
            if want != got:
                raise InputMismatchError(
                    f"input {self.label!r} dim {d}: expected {expected} = {want}, got {got}"
                )
        return value


class RowCheck:
    """One tensor input's dtype, rank and sizes but the batch dim's, ready to check one request
    quickly. Compound sizes (``2*s0``) and symbol ranges are left to :class:`LeafChecks`, which
    the program applies to the stacked run."""

    __slots__ = ("batched_key", "dtype", "fixed", "name", "rank", "sizes", "symbols")

    def __init__(self, name: str, meta: TensorMeta, batch_axis: int | None):
        self.name = name
        self.dtype = torch_dtype(meta.dtype)
        self.rank = len(meta.sizes)
        self.sizes = meta.sizes
        # (dim, size) for static dims and (dim, symbol) for plain-symbol dims, batch dim left out
        self.fixed = tuple(
            (d, n) for d, n in enumerate(meta.sizes) if isinstance(n, int) and d != batch_axis
        )
        self.symbols = tuple(
            (d, n.expr.as_symbol())
            for d, n in enumerate(meta.sizes)
            if isinstance(n, SymExpr) and n.expr.as_symbol() and d != batch_axis
        )
        # A batched input whose other dims are all static: every valid request has the same key.
        self.batched_key = None
        if batch_axis is not None and len(self.fixed) == self.rank - 1:
            self.batched_key = ("batched", self.dtype, tuple(n for _, n in self.fixed))

    def validate(self, value: torch.Tensor, env: dict[str, int]) -> tuple[int, ...]:
        """The value's shape, once dtype, rank and sizes are right; else InputMismatchError."""
        if value.dtype != self.dtype:
            raise InputMismatchError(
                f"input {self.name!r}: expected dtype {self.dtype}, got {value.dtype}"
            )
        shape = value.shape
        if len(shape) != self.rank:
            raise InputMismatchError(
                f"input {self.name!r}: expected {self.rank} dimensions "
                f"{sizes_text(self.sizes)}, got {len(shape)} {list(shape)}"
            )
        for d, want in self.fixed:
            if shape[d] != want:
                raise InputMismatchError(
                    f"input {self.name!r} dim {d}: expected {want}, got {shape[d]} "
                    f"(shape {list(shape)})"
                )
        for d, sym in self.symbols:
            bound = env.setdefault(sym, shape[d])
            if bound != shape[d]:
                raise InputMismatchError(
                    f"input {self.name!r} dim {d}: {sym} is {bound} elsewhere in "
                    f"the inputs, got {shape[d]}"
                )
        return tuple(shape)


def moved(name: str, value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``value`` on ``device``, from the CPU or another device of the same type."""
    if value.device.type not in ("cpu", device.type):
        raise InputMismatchError(
            f"input {name!r} is on device {value.device}; this "
            f"server runs on {device}: send a cpu or {device.type} tensor"
        )
    return value.to(device)


def sizes_text(sizes) -> str:
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def _range_text(lo, hi) -> str:
    return f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
