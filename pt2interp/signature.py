"""A program's calling convention, read once from its model: which values a caller passes and
gets back, their names, how ``(args, kwargs)`` bind to them and how outputs nest.

Everything that calls a program or names its values goes through :class:`CallSignature`:
:class:`~pt2interp.loaded.LoadedProgram`, the server (:mod:`pt2interp.serve.batching` and the
HTTP codec), ``info`` (:mod:`pt2interp.introspect`) and the code generator. A call is a flat list
of *input leaves* in signature order; the server receives leaves from the wire and hands them
to the program without ever building ``(args, kwargs)``.

Names are forward's parameter names, dotted below them (``x``, ``xs.0``, ``opts.scale``), and
``out``, ``out.0``, ``out.sum`` for outputs: the spelling ``info``, ``run``, the server and
input errors share.

>>> import torch, pt2interp
>>> sig = CallSignature.from_model(pt2interp.read_program("fixtures/zoo/multi_io.pt2").model)
>>> sig.input_names
[('a', False), ('b', False), ('mask', False), ('scale', True)]
>>> sig.output_names
['out.sum', 'out.pair.0', 'out.pair.1', 'out.cat']
>>> a, b, mask, scale = torch.ones(5, 6), torch.ones(5, 3), torch.ones(5, 4) > 0, torch.ones(4)
>>> leaves = sig.bind((a,), {"b": b, "mask": mask, "scale": scale})  # positional by name
>>> [leaf is value for leaf, value in zip(leaves, (a, b, mask, scale))]
[True, True, True, True]
>>> args, kwargs = sig.unbind(leaves)
>>> len(args), list(kwargs)
(3, ['scale'])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pt2interp.errors import InputMismatchError, SchemaError
from pt2interp.kinds import PASSED_INPUT_KINDS, RETURNED_OUTPUT_KINDS, ArgKind, InputKind
from pt2interp.treespec import TreeSpec, leaf_paths
from pt2interp.treespec import input_leaf_names as spec_names

if TYPE_CHECKING:  # the checks need torch; names, binding and structure do not
    import torch

    from pt2interp.input_checks import LeafChecks
    from pt2interp.schema import ExportedProgramModel, InputSpec, OutputSpec, TensorMeta

_MISSING = object()


@dataclass(frozen=True, eq=False)
class InputLeaf:
    """One value a caller passes. ``kind``: ``tensor``, ``int`` (an int or SymInt input),
    ``constant`` (a constant input, defaulting to ``constant``) or ``other``."""

    name: str
    kind: str
    meta: TensorMeta | None = None
    keyword: bool = False
    constant: Any = None
    spec: InputSpec | None = None  # where it came from, for a signature read from a model
    graph_index: int | None = None  # position among the graph's inputs


@dataclass(frozen=True, eq=False)
class OutputLeaf:
    """One value a caller gets back."""

    name: str
    meta: TensorMeta | None = None
    spec: OutputSpec | None = None
    graph_index: int | None = None  # position among the graph's outputs


# -- names ----------------------------------------------------------------------------------------
def input_leaf_names(model: ExportedProgramModel) -> list[tuple[str, bool]]:
    """``(name, is_keyword)`` of each value a caller passes, in the signature's order: forward's
    parameter names, dotted below them (``xs.0``). Archives before torch 2.6 record no parameter
    names: the graph's placeholder names (export derives them from the same words) stand in."""
    leaves = [s for s in model.signature.input_specs if s.kind in PASSED_INPUT_KINDS]
    root = model.root_call
    in_spec = root.in_spec if root else None
    arg_names = list((root.forward_arg_names if root else None) or [])
    named = spec_names(in_spec, arg_names) if arg_names else None
    if named is not None and len(named) == len(leaves):
        return named
    keyword = [kw for _, kw in spec_names(in_spec, [])] if in_spec is not None else []
    if len(keyword) != len(leaves):
        keyword = [False] * len(leaves)
    return [
        (
            s.name
            or (
                s.arg.value.name
                if s.arg.kind in (ArgKind.TENSOR, ArgKind.SYM_INT) and hasattr(s.arg.value, "name")
                else f"input_{i}"
            ),
            kw,
        )
        for i, (s, kw) in enumerate(zip(leaves, keyword))
    ]


def output_leaf_names(model: ExportedProgramModel) -> list[str]:
    """``out``, ``out.0``, ``out.sum``, ``out.pair.0``: each value a caller gets back, in order."""
    root = model.root_call
    count = sum(1 for s in model.signature.output_specs if s.kind in RETURNED_OUTPUT_KINDS)
    names = (
        leaf_paths(root.out_spec, "out") if root is not None and root.out_spec is not None else []
    )
    if len(names) == count:
        return names
    return ["out"] if count == 1 else [f"out.{i}" for i in range(count)]


# -- the signature --------------------------------------------------------------------------------
class CallSignature:
    """The calling convention of one program (see the module docstring): its input and output
    leaves, the tree specs that nest them, forward's parameter names and the symbols' ranges."""

    def __init__(
        self,
        inputs: list[InputLeaf],
        outputs: list[OutputLeaf],
        in_spec: TreeSpec | None = None,
        out_spec: TreeSpec | None = None,
        arg_names: list[str] | None = None,
        ranges: dict[str, tuple[int | None, int | None]] | None = None,
    ):
        self.inputs = inputs
        self.outputs = outputs
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.arg_names = list(arg_names or [])
        self.ranges = ranges or {}
        # ((args...), {kwargs}): the shape torch.export records; None for any other
        self.n_positional: int | None = (
            len(in_spec.children[0].children)
            if in_spec is not None
            and in_spec.type == "builtins.tuple"
            and len(in_spec.children) == 2
            else None
        )
        self._single_output = len(outputs) == 1 and (out_spec is None or out_spec.is_leaf)

    @classmethod
    def from_model(
        cls, model: ExportedProgramModel, *, strict: bool = False, member: str | None = None
    ) -> CallSignature:
        """The signature of a parsed program (``read_program(path).model``). ``strict``: raise
        :class:`~pt2interp.errors.SchemaError` (naming ``member``) where the signature, the graph
        and the tree specs disagree on how many values go in or come out, as a program that is
        to run must; ``info`` describes such archives as they are."""
        root = model.root_call
        values = model.graph.tensor_values
        specs = model.signature.input_specs
        caller = [(i, s) for i, s in enumerate(specs) if s.kind in PASSED_INPUT_KINDS]
        inputs = []
        for (name, keyword), (i, s) in zip(input_leaf_names(model), caller):
            if s.kind == InputKind.CONSTANT_INPUT:
                kind, meta = "constant", None
            elif s.arg.kind is ArgKind.TENSOR:
                kind, meta = "tensor", values.get(s.arg.value.name)
            else:
                kind, meta = (
                    ("int" if s.arg.kind in (ArgKind.SYM_INT, ArgKind.INT) else "other"),
                    None,
                )
            inputs.append(InputLeaf(name, kind, meta, keyword, s.constant_value, s, i))
        returned = [
            (i, s)
            for i, s in enumerate(model.signature.output_specs)
            if s.kind in RETURNED_OUTPUT_KINDS
        ]
        outputs = [
            OutputLeaf(
                name, values.get(s.arg.value.name) if s.arg.kind is ArgKind.TENSOR else None, s, i
            )
            for name, (i, s) in zip(output_leaf_names(model), returned)
        ]
        signature = cls(
            inputs,
            outputs,
            root.in_spec if root else None,
            root.out_spec if root else None,
            (root.forward_arg_names if root else None) or [],
            {name: (rc.min_val, rc.max_val) for name, rc in model.range_constraints.items()},
        )
        if strict:
            signature._require_consistent(model, member)
        return signature

    def _require_consistent(self, model: ExportedProgramModel, member: str | None) -> None:
        specs, outs = model.signature.input_specs, model.signature.output_specs
        graph = model.graph
        if len(specs) != len(graph.inputs):
            raise SchemaError(
                f"the signature lists {len(specs)} inputs but the graph has {len(graph.inputs)}",
                member=member,
                path="graph_module.signature.input_specs",
            )
        if self.in_spec is not None and self.in_spec.num_leaves != len(self.inputs):
            raise SchemaError(
                f"the input tree spec holds {self.in_spec.num_leaves} values but the signature "
                f"lists {len(self.inputs)} user inputs",
                member=member,
                path="graph_module.module_call_graph[0].signature.in_spec",
            )
        if len(outs) != len(graph.outputs):
            raise SchemaError(
                f"the signature lists {len(outs)} outputs but the graph has {len(graph.outputs)}",
                member=member,
                path="graph_module.signature.output_specs",
            )
        if self.out_spec is not None and self.out_spec.num_leaves != len(self.outputs):
            raise SchemaError(
                f"the output tree spec holds {self.out_spec.num_leaves} values but the signature "
                f"lists {len(self.outputs)} user outputs",
                member=member,
                path="graph_module.module_call_graph[0].signature.out_spec",
            )

    # -- names ------------------------------------------------------------------------------------
    @functools.cached_property
    def input_names(self) -> list[tuple[str, bool]]:
        """``(name, is_keyword)`` of each input leaf."""
        return [(leaf.name, leaf.keyword) for leaf in self.inputs]

    @functools.cached_property
    def output_names(self) -> list[str]:
        return [leaf.name for leaf in self.outputs]

    def label(self, n: int) -> str:
        """Input leaf ``n`` as error messages name it."""
        return self.inputs[n].name if n < len(self.inputs) else f"input {n}"

    # -- binding ----------------------------------------------------------------------------------
    def bind(self, args: tuple, kwargs: dict) -> list[Any]:
        """The input leaves of a call ``f(*args, **kwargs)``: positional inputs may be passed by
        name, constant inputs left out. Raises :class:`~pt2interp.errors.InputMismatchError`."""
        spec = self.in_spec
        if spec is None:
            leaves = list(args) + list(kwargs.values())
        elif not kwargs and self._flat_positional and len(args) == len(self.inputs):
            leaves = list(args)  # the common call, f(x) or f(a, b): nothing nests
        else:
            if self.n_positional is not None:
                args, kwargs = self._normalize(tuple(args), kwargs)
            leaves = spec.flatten((tuple(args), kwargs), "inputs")
        if len(leaves) != len(self.inputs):
            raise InputMismatchError(f"expected {len(self.inputs)} inputs, got {len(leaves)}")
        return leaves

    @functools.cached_property
    def _flat_positional(self) -> bool:
        """Every input is a plain positional leaf: binding is the identity."""
        spec = self.in_spec
        return (
            self.n_positional == len(self.inputs)
            and not spec.children[1].children
            and all(c.is_leaf for c in spec.children[0].children)
        )

    def _normalize(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        n_pos = self.n_positional
        if len(args) > n_pos:
            raise InputMismatchError(f"expected at most {n_pos} positional inputs, got {len(args)}")
        if len(args) < n_pos and self.arg_names:
            # positional arguments passed by name
            missing = self.arg_names[len(args) : n_pos]
            if all(m in kwargs for m in missing):
                kwargs = dict(kwargs)
                args = args + tuple(kwargs.pop(m) for m in missing)
        if len(args) < n_pos:
            names = self.arg_names[len(args) : n_pos] or [f"#{i}" for i in range(len(args), n_pos)]
            raise InputMismatchError(
                f"missing positional input(s) {names}: expected {n_pos}, got {len(args)}"
            )
        kw_keys = self.in_spec.children[1].dict_keys
        if set(kwargs) != set(kw_keys):
            kwargs = dict(kwargs)
            for key in kw_keys:
                if key not in kwargs:
                    const = self._constant_default(key)
                    if const is not _MISSING:
                        kwargs[key] = const
        return args, kwargs

    def _constant_default(self, name: str) -> Any:
        for leaf in self.inputs:
            if leaf.kind == "constant" and leaf.spec.name == name:
                return leaf.constant
        return _MISSING

    def unbind(self, leaves: list[Any]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` that :meth:`bind` turns into ``leaves`` again."""
        if self.n_positional is None:
            return tuple(leaves), {}
        args, kwargs = self.in_spec.unflatten(list(leaves))
        return tuple(args), dict(kwargs)

    def bind_named(self, values: dict[str, Any]) -> list[Any]:
        """Input leaves from values keyed by input name or by position (``in_0``, ``in_1``, ...),
        constant inputs defaulted. An input given twice, missing or unknown is an
        :class:`~pt2interp.errors.InputMismatchError` listing the expected names."""
        names = [leaf.name for leaf in self.inputs]
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
            # a constant input defaults to its value, unless that is None (as before)
            if v is _MISSING and self.inputs[i].constant is None
        ]
        if unknown or missing:
            expected = ", ".join(
                f"{leaf.name} (in_{i}{', keyword' if leaf.keyword else ''})"
                for i, leaf in enumerate(self.inputs)
            )
            problems = ([f"unknown {sorted(unknown)}"] if unknown else []) + (
                [f"missing {missing}"] if missing else []
            )
            raise InputMismatchError(f"{'; '.join(problems)}: the program takes {expected}")
        return [self.inputs[i].constant if v is _MISSING else v for i, v in enumerate(leaves)]

    # -- checks -----------------------------------------------------------------------------------
    @functools.cached_property
    def checks(self) -> LeafChecks:
        """The input checks (see :mod:`pt2interp.input_checks`), built on first use."""
        from pt2interp.input_checks import LeafChecks

        return LeafChecks(self.inputs, self.ranges)

    def check(self, leaves: list[Any], device: torch.device | None = None) -> list[Any]:
        """``leaves`` checked against the recorded metadata, every dim and symbol range included,
        tensors elsewhere moved to ``device``. Raises
        :class:`~pt2interp.errors.InputMismatchError` naming the input and dimension."""
        return self.checks.check(leaves, device)

    def moved_to(self, leaves: list[Any], device: torch.device) -> list[Any]:
        """Tensors moved to ``device`` from the CPU or another device of its type; one anywhere
        else is refused (a server on the CPU does not take CUDA tensors)."""
        return self.checks.moved_to(leaves, device)

    # -- outputs ----------------------------------------------------------------------------------
    def output_leaves(self, out: Any) -> list[Any]:
        """A call's result, flattened to its output leaves."""
        if self.out_spec is not None:
            return self.out_spec.flatten(out, "outputs")
        return list(out) if len(self.outputs) > 1 else [out]

    def build_output(self, leaves: list[Any]) -> Any:
        """The caller's output structure (tuple, dict, ...) from output leaves."""
        if self._single_output:
            return leaves[0]
        if self.out_spec is None:
            return leaves[0] if len(leaves) == 1 else tuple(leaves)
        return self.out_spec.unflatten(leaves)

    def named_outputs(self, out: Any) -> dict[str, Any]:
        """A call's result by output name (``{"out.sum": ..., "out.pair.0": ...}``)."""
        return dict(zip(self.output_names, self.output_leaves(out)))
