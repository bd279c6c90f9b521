"""A program ready to run: weights on a device, the graph compiled, inputs checked.

>>> import torch, pt2interp, importlib.resources as r
>>> prog = pt2interp.load(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> prog(torch.zeros(2, 8)).shape
torch.Size([2, 16])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pt2interp import limits
from pt2interp.errors import DeviceError, ExecutionError, InputMismatchError, SchemaError
from pt2interp.interpreter import GraphCompiler, GraphPlan
from pt2interp.ops import functorch
from pt2interp.program import Program
from pt2interp.schema import InputSpec, TensorMeta
from pt2interp.treespec import TreeSpec
from pt2interp.weights import torch_dtype

_STATE_KINDS = ("parameter", "buffer", "tensor_constant", "custom_obj")


class LoadedProgram:
    """Call it like the exported module: ``prog(*args, **kwargs)``.

    Outputs come back in the original structure; buffers the graph mutates advance from call to
    call, as with ``ep.module()``. Runs under ``torch.inference_mode()`` (``torch.no_grad()`` for a
    program that uses forward-mode AD, which inference mode turns off) unless ``inference_mode=False``.
    """

    def __init__(
        self,
        program: Program,
        device: str | torch.device | None = None,
        *,
        inference_mode: bool = True,
    ):
        self.program = program
        self.inference_mode = inference_mode
        self._device = _usable_device(device) if device is not None else None
        self._state: dict[str, Any] = {}
        values = program.graph.tensor_values
        for spec in program.signature.input_specs:
            if spec.kind in _STATE_KINDS:
                value = program.tensor(spec.target)
                meta = values.get(spec.arg.value.name) if spec.arg.kind == "tensor" else None
                if (
                    spec.kind == "parameter"
                    and meta is not None
                    and meta.requires_grad
                    and isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                ):
                    # Kernels pick their path by requires_grad (matmul folding in linear, the RNN
                    # fast paths): parameters keep it as exported so results match ep.module()
                    # bit for bit. Inference mode still records no autograd graph.
                    value = value.detach().requires_grad_(True)
                self._state[spec.target] = value
        if self._device is not None:
            self._move_state(self._device)
        self._build()

    # -- set-up --------------------------------------------------------------------------------
    def _build(self) -> None:
        model = self.program.model
        member = self.program.source
        # the program's device, not the file's: factory ops recorded with device=cuda make
        # their tensors on CPU when the program runs there, and the other way round
        self._plan: GraphPlan = GraphCompiler(device=self.device, member=member).compile(
            model.graph
        )
        specs = model.signature.input_specs
        if len(specs) != len(model.graph.inputs):
            raise SchemaError(
                f"the signature lists {len(specs)} inputs but the graph has {len(model.graph.inputs)}",
                member=member,
                path="graph_module.signature.input_specs",
            )
        # inference mode turns forward-mode AD off (torch.func.jvp's tangents become None before
        # torch 2.13): a program recording a jvp runs under no_grad, which records no graph either
        self._no_autograd = (
            torch.no_grad if functorch.uses_forward_ad(model.graph) else torch.inference_mode
        )
        root = model.root_call
        self._in_spec: TreeSpec | None = root.in_spec if root else None
        self._out_spec: TreeSpec | None = root.out_spec if root else None
        self._arg_names = (root.forward_arg_names if root else None) or []
        self._input_names = model.input_leaf_names()
        self._leaf_specs = [
            i for i, s in enumerate(specs) if s.kind in ("user_input", "constant_input")
        ]
        if self._in_spec is not None and self._in_spec.num_leaves != len(self._leaf_specs):
            raise SchemaError(
                f"the input tree spec holds {self._in_spec.num_leaves} values but the signature "
                f"lists {len(self._leaf_specs)} user inputs",
                member=member,
                path="graph_module.module_call_graph[0].signature.in_spec",
            )
        self._template: list[Any] = [None] * len(specs)
        for i, s in enumerate(specs):
            if s.kind in _STATE_KINDS:
                self._template[i] = self._state[s.target]
            elif s.kind == "token":
                self._template[i] = torch.empty(0)
            elif s.kind == "constant_input":
                self._template[i] = s.constant_value
        self._checks = [
            _InputCheck.make(specs[i], model, self._label(n))
            for n, i in enumerate(self._leaf_specs)
        ]
        self._symbols = {
            name: (rc.min_val, rc.max_val) for name, rc in model.range_constraints.items()
        }
        outs = model.signature.output_specs
        if len(outs) != len(model.graph.outputs):
            raise SchemaError(
                f"the signature lists {len(outs)} outputs but the graph has {len(model.graph.outputs)}",
                member=member,
                path="graph_module.signature.output_specs",
            )
        self._user_outputs = [
            i for i, s in enumerate(outs) if s.kind in ("user_output", "loss_output")
        ]
        if self._out_spec is not None and self._out_spec.num_leaves != len(self._user_outputs):
            raise SchemaError(
                f"the output tree spec holds {self._out_spec.num_leaves} values but the signature "
                f"lists {len(self._user_outputs)} user outputs",
                member=member,
                path="graph_module.module_call_graph[0].signature.out_spec",
            )
        self._buffer_writes = [
            (i, s.target)
            for i, s in enumerate(outs)
            if s.kind in ("buffer_mutation", "parameter_mutation")
        ]
        for i, target in self._buffer_writes:
            if target not in self._state:
                raise SchemaError(
                    f"{outs[i].kind} names {target!r}, which is no parameter or buffer",
                    member=member,
                    path=f"graph_module.signature.output_specs[{i}]",
                )
        user_input_pos = {
            s.arg.value.name: n
            for n, s in enumerate(specs[i] for i in self._leaf_specs)
            if s.kind == "user_input" and s.arg.kind == "tensor"
        }
        self._input_writes = []
        for i, s in enumerate(outs):
            if s.kind == "user_input_mutation":
                if s.target not in user_input_pos:
                    raise SchemaError(
                        f"user_input_mutation names {s.target!r}, which is no user input",
                        member=member,
                        path=f"graph_module.signature.output_specs[{i}]",
                    )
                self._input_writes.append((i, user_input_pos[s.target]))

    def _label(self, n: int) -> str:
        return self._input_names[n][0] if n < len(self._input_names) else f"input {n}"

    def adopt_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Run with these tensors for the named parameters/buffers from now on (the module
        wrapper calls this after ``.to()`` or ``load_state_dict`` replaced its tensors)."""
        self._state.update(tensors)
        devices = {t.device for t in tensors.values() if isinstance(t, torch.Tensor)}
        if len(devices) == 1 and (self._device or torch.device("cpu")) != next(iter(devices)):
            self._device = next(iter(devices))
        self._build()

    def _move_state(self, device: torch.device) -> None:
        for k, v in self._state.items():
            if isinstance(v, torch.Tensor):
                self._state[k] = v.to(device)

    # -- public --------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[tuple[str, bool]]:
        """``(name, is_keyword)`` of each input value, in order: the names ``pt2interp info``
        prints (``x``, ``scale``, ``xs.0``)."""
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        """``out``, ``out.0``, ``out.sum``, ...: each output value, as ``info`` and the server name them."""
        return self.program.model.output_leaf_names()

    def named_outputs(self, outputs: Any) -> dict[str, Any]:
        """A call's outputs by :attr:`output_names` (``{"out.sum": ..., "out.pair.0": ...}``)."""
        leaves = (
            self._out_spec.flatten(outputs, "outputs")
            if self._out_spec is not None
            else (list(outputs) if len(self._user_outputs) > 1 else [outputs])
        )
        return dict(zip(self.output_names, leaves))

    def bind_named(self, values: dict[str, Any]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for a call from values keyed by input name (:attr:`input_names`)
        or by position among them (``in_0``, ``in_1``, ...), as ``pt2interp run --inputs`` reads
        them. An input given twice, missing or unknown is an :class:`InputMismatchError` listing the
        expected names."""
        names = [n for n, _ in self._input_names]
        leaves: list[Any] = [_MISSING] * len(names)
        index = {n: i for i, n in enumerate(names)}
        unknown = []
        for key, value in values.items():
            i = index.get(key)
            if (
                i is None
                and key.startswith("in_")
                and key[3:].isdigit()
                and int(key[3:]) < len(names)
            ):
                i = int(key[3:])
            if i is None:
                unknown.append(key)
            elif leaves[i] is not _MISSING:
                raise InputMismatchError(
                    f"input {names[i]!r} is given twice (as {names[i]!r} and in_{i})"
                )
            else:
                leaves[i] = value
        missing = [
            names[i]
            for i, v in enumerate(leaves)
            if v is _MISSING and self._template[self._leaf_specs[i]] is None
        ]
        if unknown or missing:
            expected = ", ".join(
                f"{n} (in_{i}{', keyword' if kw else ''})"
                for i, (n, kw) in enumerate(self._input_names)
            )
            problems = ([f"unknown {sorted(unknown)}"] if unknown else []) + (
                [f"missing {missing}"] if missing else []
            )
            raise InputMismatchError(f"{'; '.join(problems)}: the program takes {expected}")
        leaves = [
            self._template[self._leaf_specs[i]] if v is _MISSING else v
            for i, v in enumerate(leaves)
        ]
        if (
            self._in_spec is not None
            and self._in_spec.type == "builtins.tuple"
            and len(self._in_spec.children) == 2
        ):
            args, kwargs = self._in_spec.unflatten(leaves)
            return tuple(args), dict(kwargs)
        return tuple(leaves), {}

    @property
    def device(self) -> torch.device:
        """Where weights live and computation runs."""
        if self._device is not None:
            return self._device
        for v in self._state.values():
            if isinstance(v, torch.Tensor):
                return v.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> LoadedProgram:
        """Move weights and constants to ``device`` (in place) and return self."""
        self._device = _usable_device(device)
        self._move_state(self._device)
        self._build()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current parameters and persistent buffers (mutated buffers included)."""
        return {
            s.target: self._state[s.target]
            for s in self.program.signature.input_specs
            if s.kind == "parameter" or (s.kind == "buffer" and s.persistent is not False)
        }

    def fallback_ops(self) -> list[str]:
        """Targets in this program that run through the generic ``torch.ops`` fallback."""
        return sorted(self._plan.fallback_targets())

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)

    def run(self, *args, on_node: Callable[[str, str, Any], None] | None = None, **kwargs):
        """Run the program. ``on_node(name, target, value)``, if given, sees every value."""
        inputs, user_leaves = self._bind(args, kwargs)
        with limits.call_budget():
            if self.inference_mode:
                with self._no_autograd():
                    flat = (
                        self._plan.run(inputs)
                        if on_node is None
                        else self._plan.run_hooked(inputs, on_node)
                    )
                    self._write_back(flat, user_leaves)
            else:
                flat = (
                    self._plan.run(inputs)
                    if on_node is None
                    else self._plan.run_hooked(inputs, on_node)
                )
                self._write_back(flat, user_leaves)
        leaves = [flat[i] for i in self._user_outputs]
        if self._out_spec is None:
            return leaves[0] if len(leaves) == 1 else tuple(leaves)
        return self._out_spec.unflatten(leaves)

    def module(self) -> torch.nn.Module:
        """A ``torch.nn.Module`` running this program, weights registered under their original
        names (so ``state_dict()``, ``.to()`` and ``load_state_dict()`` work as on the original)."""
        from pt2interp.module import ProgramModule

        return ProgramModule(self)

    # -- calling convention ---------------------------------------------------------------------
    def _bind(self, args: tuple, kwargs: dict) -> tuple[list, list]:
        if self._in_spec is not None:
            args, kwargs = self._normalize_call(args, kwargs)
            leaves = self._in_spec.flatten((tuple(args), kwargs), "inputs")
        else:
            leaves = list(args) + list(kwargs.values())
        if len(leaves) != len(self._leaf_specs):
            raise InputMismatchError(f"expected {len(self._leaf_specs)} inputs, got {len(leaves)}")
        inputs = list(self._template)
        device = self.device  # inputs on another device are moved to the program's
        env: dict[str, int] = {}
        for check, slot, value in zip(self._checks, self._leaf_specs, leaves):
            value = check(value, env, self._symbols)
            if isinstance(value, torch.Tensor) and value.device != device:
                value = value.to(device)
            inputs[slot] = value
        return inputs, leaves

    def _normalize_call(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        spec = self._in_spec
        if spec.type != "builtins.tuple" or len(spec.children) != 2:
            return args, kwargs
        n_pos = len(spec.children[0].children)
        kw_keys = spec.children[1].dict_keys
        args = tuple(args)
        if len(args) > n_pos:
            raise InputMismatchError(f"expected at most {n_pos} positional inputs, got {len(args)}")
        if len(args) < n_pos and self._arg_names:
            # positional arguments passed by name
            missing = self._arg_names[len(args) : n_pos]
            if all(m in kwargs for m in missing):
                kwargs = dict(kwargs)
                args = args + tuple(kwargs.pop(m) for m in missing)
        if len(args) < n_pos:
            names = self._arg_names[len(args) : n_pos] or [f"#{i}" for i in range(len(args), n_pos)]
            raise InputMismatchError(
                f"missing positional input(s) {names}: expected {n_pos}, got {len(args)}"
            )
        if set(kwargs) != set(kw_keys):
            kwargs = dict(kwargs)
            for key in kw_keys:
                if key not in kwargs:
                    const = self._constant_default(key)
                    if const is not _MISSING:
                        kwargs[key] = const
        return args, kwargs

    def _constant_default(self, name: str):
        for spec in self.program.signature.input_specs:
            if spec.kind == "constant_input" and spec.name == name:
                return spec.constant_value
        return _MISSING

    def _write_back(self, flat: list, user_leaves: list) -> None:
        i = target = None
        try:
            for i, target in self._buffer_writes:
                buf = self._state[target]
                value = flat[i]
                if buf is not value:
                    buf.copy_(value)
            for i, pos in self._input_writes:
                target = f"input {self._label(pos)}"
                dst = user_leaves[pos]
                if dst is not flat[i]:
                    dst.copy_(flat[i])
        except Exception as exc:  # the graph's new value does not fit what it mutates
            raise ExecutionError(
                f"{self.program.source}: graph_module.signature.output_specs[{i}]: cannot write "
                f"the new value of {target!r} back ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''})"
            ) from exc

    def __repr__(self) -> str:
        return f"<LoadedProgram {self.program.source!r} device={self.device}>"


_MISSING = object()


class _InputCheck:
    """Checks one user input against its recorded metadata: dtype, rank, sizes, dim ranges."""

    __slots__ = ("dtype", "kind", "label", "meta")

    def __init__(self, label: str, meta: TensorMeta | None, kind: str):
        self.label = label
        self.meta = meta
        self.kind = kind
        self.dtype = torch_dtype(meta.dtype) if meta is not None else None

    @classmethod
    def make(cls, spec: InputSpec, model, label: str) -> _InputCheck:
        if spec.kind == "user_input" and spec.arg.kind == "tensor":
            meta = model.graph.tensor_values.get(spec.arg.value.name)
            return cls(label, meta, "tensor")
        if spec.kind == "user_input" and spec.arg.kind in ("sym_int", "int"):
            return cls(label, None, "int")
        return cls(label, None, "other")

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
                f"{_shape_text(meta.sizes)}, got {value.dim()} {list(value.shape)}"
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
                    f"input {self.label!r} dim {d}: expected {sym} in {_range_text(lo, hi)}, got {got}"
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


def _shape_text(sizes) -> str:
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def _range_text(lo, hi) -> str:
    return f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"


def _usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, refusing one this torch or machine does not have
    (a CPU-only torch asked for ``cuda`` raises an AssertionError deep inside otherwise)."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeviceError(f"device {str(device)!r} is not available: {first}") from None
    return dev
