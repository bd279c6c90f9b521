"""Recognise standard ``torch.nn`` layers in a module's calls.

A call of a child whose frames name a ``torch.nn`` class (``torch.nn.modules.conv.Conv2d``)
is matched against the op(s) that layer emits in either IR (training IR ``aten.conv2d``, core
ATen ``aten.convolution``); on a match the layer is written as itself
(``nn.Conv2d(3, 8, 3, padding=1)``, called as ``self.conv1(x)``) with hyper-parameters read
from the op's arguments and the weights' shapes and dtype. Anything that does not match the
class's pattern exactly (extra nodes, a weight owned elsewhere, a state-dict name the layer
would not have) returns None, and the caller falls back to functional code.

>>> import pt2interp, importlib.resources as r
>>> from pt2interp.codegen.facts import ProgramFacts
>>> from pt2interp.codegen.tree import recover
>>> facts = ProgramFacts.of(pt2interp.read_program(r.files("pt2interp.examples") / "tiny_mlp.pt2"))
>>> root, _ = recover(facts)
>>> fc1 = root.children["fc1"]
>>> match_call(fc1, fc1.calls[0], facts).ctor.text(lambda hole: repr(hole.value))
'nn.Linear(8, 32)'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pt2interp.codegen.ctor import Ctor, Lit, Raw
from pt2interp.codegen.facts import ProgramFacts, StateEntry
from pt2interp.codegen.names import list_index
from pt2interp.codegen.tree import CallGroup, Module
from pt2interp.kinds import ArgKind, InputKind
from pt2interp.ops.registry import registry_key
from pt2interp.schema import Node

_FLOAT32 = "float32"


@dataclass
class LayerMatch:
    """A child call recognised as a standard layer.

    ``args``: graph values passed to the call, in order; ``pattern``: what the call returns,
    as value names (nested tuples for ``out, (h, c) = self.lstm(x)``).
    """

    ctor: Ctor
    args: list[str]
    pattern: object
    params: list[str] = field(default_factory=list)  # state attributes the layer owns
    state_tuple: bool = False  # pass args[1:] as one tuple: ``self.lstm(x, (h0, c0))``
    # a module-level function (a key of FUNCTIONS) called with the layer and ``args`` in place
    # of the layer's own forward: ``multihead_self_attention(self.self_attn, x)``
    function: str = ""

    def call_text(self, sources: list[str], target: str) -> str:
        if self.function:
            return f"{self.function}({', '.join([target, *sources])})"
        if self.state_tuple and len(sources) > 1:
            sources = [sources[0], f"({', '.join(sources[1:])})"]
        return f"{target}({', '.join(sources)})"


Matcher = Callable[["_View"], "LayerMatch | None"]
LAYERS: dict[str, Matcher] = {}
# Module-level functions the generated code may call (LayerMatch.function), by name: the
# emitter writes the ones the code reads, as laid out here (what ruff format writes).
FUNCTIONS: dict[str, str] = {}


def layer(*class_names: str):
    def wrap(fn: Matcher) -> Matcher:
        for name in class_names:
            LAYERS[name] = fn
        return fn

    return wrap


def match_call(module: Module, call: CallGroup, facts: ProgramFacts) -> LayerMatch | None:
    """The standard layer ``call`` is, or None."""
    if not module.is_torch_nn:
        return None
    matcher = LAYERS.get(module.class_name or "")
    if matcher is None:
        return None
    view = _View(module, call, facts)
    try:
        found = matcher(view)
    except _NoMatch:
        return None
    if found is None:
        return None
    # every output anything reads must come out of the layer's call
    if not set(call.outputs) <= set(_flatten(found.pattern)):
        return None
    # the layer must own exactly the state the archive names for it (its children's too)
    if set(subtree_state(module)) != set(found.params):
        return None
    return found


def subtree_state(module: Module) -> dict[str, StateEntry]:
    """State of a module and its descendants, by path relative to it."""
    out = dict(module.state)
    for name, child in module.children.items():
        out.update({f"{name}.{k}": v for k, v in subtree_state(child).items()})
    return out


class _NoMatch(Exception):
    pass


class _View:
    """One call's nodes, with helpers to read arguments and check ownership."""

    def __init__(self, module: Module, call: CallGroup, facts: ProgramFacts):
        self.module = module
        self.call = call
        self.facts = facts
        self.nodes = call.node_list
        self.ops = [_op(n) for n in self.nodes]

    def require(self, cond: bool) -> None:
        if not cond:
            raise _NoMatch

    def args(self, node: Node) -> dict:
        return {na.name: na.arg for na in node.inputs}

    def value(self, node: Node, name: str, default=None):
        """The argument's Python value (tensor arguments as their graph value name)."""
        arg = self.args(node).get(name)
        if arg is None:
            return default
        v = arg.value
        if arg.kind in (ArgKind.TENSOR, ArgKind.OPTIONAL_TENSOR, ArgKind.SYM_INT):
            return v.name if hasattr(v, "name") else v
        if arg.kind in (ArgKind.TENSORS, ArgKind.OPTIONAL_TENSORS):
            return [x.name if hasattr(x, "name") else None for x in v]
        return v

    def own(self, value, attr: str) -> StateEntry:
        """The module's own state ``attr``, which ``value`` must be."""
        self.require(
            isinstance(value, str) and self.facts.state_path_in(value, self.module.path) == attr
        )
        entry = subtree_state(self.module).get(attr)
        self.require(entry is not None and entry.shape is not None)
        return entry

    def only_input(self) -> str:
        ins = self.call.inputs
        self.require(len(ins) == 1)
        return ins[0]

    def out(self, node: Node, index: int = 0) -> str:
        refs = [r for a in node.outputs for r in a.refs()]
        self.require(len(refs) > index)
        return refs[index]

    def single(self, *ops: str) -> Node:
        self.require(len(self.nodes) == 1 and self.ops[0] in ops and not self.module.children)
        return self.nodes[0]

    def sequence(self, steps: list, start: int = 0) -> tuple[list[str], dict]:
        """Match ``self.nodes[start:start + len(steps)]`` against ``steps``.

        Each step is ``(ops, {argument: expected})``; ``expected`` is a literal or graph
        value name (compared as is, lists as tuples), :class:`Out` (the output of an earlier
        step), :class:`Cap` (captured the first time, compared after) or :class:`Own` (the
        module's own state). Returns the outputs of the steps and the captures by name.
        """
        outs: list[str] = []
        captured: dict = {}
        self.require(len(self.nodes) >= start + len(steps))
        for k, (ops, expected) in enumerate(steps):
            node = self.nodes[start + k]
            self.require(_op(node) in ((ops,) if isinstance(ops, str) else ops))
            for name, want in expected.items():
                got = self.value(node, name)
                if got is None and name == "size":
                    got = self.value(node, "shape")  # reshape's list has another name
                self._check(tuple(got) if isinstance(got, list) else got, want, outs, captured)
            outs.append(self.out(node))
        return outs, captured

    def _check(self, got, want, outs, captured) -> None:
        if isinstance(want, tuple):
            self.require(isinstance(got, tuple) and len(got) == len(want))
            for g, w in zip(got, want):
                self._check(g, w, outs, captured)
        elif isinstance(want, Out):
            self.require(got == outs[want.step])
        elif isinstance(want, Cap):
            if want.name in captured:
                self.require(got == captured[want.name])
            else:
                captured[want.name] = got
        elif isinstance(want, Own):
            self.own(got, want.attr)
        else:
            self.require(got == want and type(got) is type(want))


@dataclass(frozen=True)
class Out:
    step: int


@dataclass(frozen=True)
class Cap:
    name: str


@dataclass(frozen=True)
class Own:
    attr: str


def _op(node: Node) -> str:
    return registry_key(node.target).removeprefix("aten.")


def _flatten(pattern) -> list[str]:
    if pattern is None:
        return []
    if isinstance(pattern, str):
        return [pattern]
    return [v for p in pattern for v in _flatten(p)]


def _compact(values) -> object:
    """``(3, 3)`` → ``3``; ``(3, 1)`` stays a tuple."""
    values = tuple(values)
    return values[0] if values and all(v == values[0] for v in values) else values


def _dtype_kw(entries: list[StateEntry]) -> list:
    dtypes = {e.dtype for e in entries}
    if len(dtypes) != 1:
        raise _NoMatch
    dtype = dtypes.pop()
    return [] if dtype == _FLOAT32 else [("dtype", Raw(f"torch.{dtype}"))]


def _class_rank(view: _View) -> int:
    name = view.module.class_name or ""
    rank = list_index(name[-2:-1]) if name.endswith("d") else None
    view.require(rank is not None)
    return rank


# -- linear ------------------------------------------------------------------------------------


@layer("Linear", "NonDynamicallyQuantizableLinear")
def _linear(v: _View) -> LayerMatch:
    x = v.only_input()
    if v.ops == ["linear.default"]:
        node = v.nodes[0]
        v.require(v.value(node, "input") == x)
        weight = v.own(v.value(node, "weight"), "weight")
        bias_value = v.value(node, "bias")
        out = v.out(node)
    else:
        weight, bias_value, out = _decomposed_linear(v, x)
    return _linear_match(v, x, weight, bias_value, out)


def _decomposed_linear(v: _View, x: str):
    """Core ATen's linear: ``addmm(b, x, w.t())`` / ``mm``, with views around for 3D+ inputs."""
    transpose = [n for n, op in zip(v.nodes, v.ops) if op in ("permute.default", "t.default")]
    mms = [n for n, op in zip(v.nodes, v.ops) if op in ("addmm.default", "mm.default")]
    views = [
        n
        for n, op in zip(v.nodes, v.ops)
        if op in ("view.default", "_unsafe_view.default", "reshape.default")
    ]
    v.require(
        len(transpose) == 1
        and len(mms) == 1
        and len(views) in (0, 2)
        and len(v.nodes) == 2 + len(views)
    )
    t, mm = transpose[0], mms[0]
    weight = v.own(v.value(t, "self"), "weight")
    if _op(t) == "permute.default":
        v.require(tuple(v.value(t, "dims")) == (1, 0))
    v.require(v.value(mm, "mat2") == v.out(t))
    for name in ("beta", "alpha"):
        v.require(v.value(mm, name, 1) == 1)
    bias_value = v.value(mm, "self") if _op(mm) == "addmm.default" else None
    mat1 = v.value(mm, "mat1")
    out = v.out(mm)
    if views:
        before = [n for n in views if v.value(n, "self") == x]
        after = [n for n in views if v.value(n, "self") == out]
        v.require(len(before) == 1 and len(after) == 1 and mat1 == v.out(before[0]))
        out = v.out(after[0])
    else:
        v.require(mat1 == x)
    return weight, bias_value, out


def _linear_match(v: _View, x: str, weight: StateEntry, bias_value, out: str) -> LayerMatch:
    v.require(len(weight.shape) == 2 and weight.kind is InputKind.PARAMETER)
    out_f, in_f = weight.shape
    entries, params = [weight], ["weight"]
    if bias_value is not None:
        bias = v.own(bias_value, "bias")
        v.require(bias.shape == (out_f,) and bias.kind is InputKind.PARAMETER)
        entries.append(bias)
        params.append("bias")
    kwargs = [] if bias_value is not None else [("bias", Lit(False, "bias"))]
    ctor = Ctor(
        "nn.Linear",
        [Lit(in_f, "in_features"), Lit(out_f, "out_features")],
        kwargs + _dtype_kw(entries),
    )
    return LayerMatch(ctor, [x], out, params=params)


# -- convolution -------------------------------------------------------------------------------


@layer("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
def _conv(v: _View) -> LayerMatch:
    rank = _class_rank(v)
    transposed = (v.module.class_name or "").startswith("ConvTranspose")
    x = v.only_input()
    if transposed:
        node = v.single(
            f"conv_transpose{rank}d.input" if rank > 1 else "conv_transpose1d.default",
            "convolution.default",
        )
    else:
        node = v.single(f"conv{rank}d.default", f"conv{rank}d.padding", "convolution.default")
    if _op(node) == "convolution.default":
        v.require(bool(v.value(node, "transposed")) == transposed)
        if not transposed:
            v.require(all(p == 0 for p in v.value(node, "output_padding", ())))
    v.require(v.value(node, "input") == x)
    weight = v.own(v.value(node, "weight"), "weight")
    v.require(len(weight.shape) == rank + 2 and weight.kind is InputKind.PARAMETER)
    groups = v.value(node, "groups", 1)
    stride = tuple(v.value(node, "stride", (1,) * rank))
    padding = v.value(node, "padding", (0,) * rank)
    dilation = tuple(v.value(node, "dilation", (1,) * rank))
    if transposed:
        in_c, out_c = weight.shape[0], weight.shape[1] * groups
    else:
        in_c, out_c = weight.shape[1] * groups, weight.shape[0]
    kernel = weight.shape[2:]
    args = [
        Lit(in_c, "in_channels"),
        Lit(out_c, "out_channels"),
        Lit(_compact(kernel), "kernel_size"),
    ]
    kwargs: list = []
    if stride != (1,) * rank:
        kwargs.append(("stride", Lit(_compact(stride), "stride")))
    if isinstance(padding, str):
        kwargs.append(("padding", Lit(padding, "padding")))
    elif tuple(padding) != (0,) * rank:
        kwargs.append(("padding", Lit(_compact(padding), "padding")))
    if transposed:
        output_padding = tuple(v.value(node, "output_padding", (0,) * rank))
        if output_padding != (0,) * rank:
            kwargs.append(("output_padding", Lit(_compact(output_padding), "output_padding")))
    if dilation != (1,) * rank:
        kwargs.append(("dilation", Lit(_compact(dilation), "dilation")))
    if groups != 1:
        kwargs.append(("groups", Lit(groups, "groups")))
    entries, params = [weight], ["weight"]
    bias_value = v.value(node, "bias")
    if bias_value is not None:
        bias = v.own(bias_value, "bias")
        v.require(bias.shape == (out_c,))
        entries.append(bias)
        params.append("bias")
    else:
        kwargs.append(("bias", Lit(False, "bias")))
    cls = ("ConvTranspose" if transposed else "Conv") + f"{rank}d"
    return LayerMatch(
        Ctor(f"nn.{cls}", args, kwargs + _dtype_kw(entries)), [x], v.out(node), params=params
    )


# -- normalization -----------------------------------------------------------------------------


@layer("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
def _batch_norm(v: _View) -> LayerMatch:
    rank = _class_rank(v)
    x = v.only_input()
    node = v.single("batch_norm.default", "_native_batch_norm_legit_no_training.default")
    if _op(node) == "batch_norm.default":
        v.require(v.value(node, "training") is False)
    v.require(v.value(node, "input") == x)
    mean = v.value(node, "running_mean")
    var = v.value(node, "running_var")
    v.require(mean is not None and var is not None)
    running_mean = v.own(mean, "running_mean")
    running_var = v.own(var, "running_var")
    v.require(
        running_mean.kind is InputKind.BUFFER
        and running_var.kind is InputKind.BUFFER
        and len(running_mean.shape) == 1
    )
    features = running_mean.shape[0]
    params = ["running_mean", "running_var"]
    entries = [running_mean, running_var]
    if "num_batches_tracked" in v.module.state:
        params.append("num_batches_tracked")
    weight_value, bias_value = v.value(node, "weight"), v.value(node, "bias")
    v.require((weight_value is None) == (bias_value is None))
    kwargs: list = []
    if weight_value is not None:
        entries += [v.own(weight_value, "weight"), v.own(bias_value, "bias")]
        params += ["weight", "bias"]
    else:
        kwargs.append(("affine", Lit(False, "affine")))
    kwargs = _defaults(eps=1e-5, momentum=0.1)(v, node) + kwargs
    ctor = Ctor(
        f"nn.BatchNorm{rank}d", [Lit(features, "num_features")], kwargs + _dtype_kw(entries)
    )
    return LayerMatch(ctor, [x], v.out(node), params=params)


@layer("LayerNorm")
def _layer_norm(v: _View) -> LayerMatch:
    x = v.only_input()
    node = v.single("layer_norm.default", "native_layer_norm.default")
    v.require(v.value(node, "input") == x)
    shape = tuple(v.value(node, "normalized_shape"))
    kwargs = _defaults(eps=1e-5)(v, node)
    entries, params = [], []
    weight_value, bias_value = v.value(node, "weight"), v.value(node, "bias")
    if weight_value is None:
        v.require(bias_value is None)
        kwargs.append(("elementwise_affine", Lit(False, "elementwise_affine")))
    else:
        w = v.own(weight_value, "weight")
        v.require(w.shape == shape)
        entries.append(w)
        params.append("weight")
        if bias_value is None:
            kwargs.append(("bias", Lit(False, "bias")))
        else:
            entries.append(v.own(bias_value, "bias"))
            params.append("bias")
    dtype = _dtype_kw(entries) if entries else []
    normalized = shape[0] if len(shape) == 1 else shape
    return LayerMatch(
        Ctor("nn.LayerNorm", [Lit(normalized, "normalized_shape")], kwargs + dtype),
        [x],
        v.out(node),
        params=params,
    )


@layer("GroupNorm")
def _group_norm(v: _View) -> LayerMatch:
    x = v.only_input()
    node = v.single("group_norm.default", "native_group_norm.default")
    v.require(v.value(node, "input") == x)
    groups = v.value(node, "num_groups" if _op(node) == "group_norm.default" else "group")
    weight_value, bias_value = v.value(node, "weight"), v.value(node, "bias")
    v.require((weight_value is None) == (bias_value is None) and weight_value is not None)
    w, b = v.own(weight_value, "weight"), v.own(bias_value, "bias")
    kwargs = _defaults(eps=1e-5)(v, node)
    ctor = Ctor(
        "nn.GroupNorm",
        [Lit(groups, "num_groups"), Lit(w.shape[0], "num_channels")],
        kwargs + _dtype_kw([w, b]),
    )
    return LayerMatch(ctor, [x], v.out(node), params=["weight", "bias"])


# -- embedding ---------------------------------------------------------------------------------


@layer("Embedding")
def _embedding(v: _View) -> LayerMatch:
    x = v.only_input()
    node = v.single("embedding.default")
    v.require(v.value(node, "indices") == x)
    w = v.own(v.value(node, "weight"), "weight")
    v.require(len(w.shape) == 2 and w.kind is InputKind.PARAMETER)
    kwargs: list = []
    padding_idx = v.value(node, "padding_idx", -1)
    if padding_idx != -1:
        kwargs.append(("padding_idx", Lit(padding_idx, "padding_idx")))
    if v.value(node, "scale_grad_by_freq", False):
        kwargs.append(("scale_grad_by_freq", Lit(True, "scale_grad_by_freq")))
    if v.value(node, "sparse", False):
        kwargs.append(("sparse", Lit(True, "sparse")))
    ctor = Ctor(
        "nn.Embedding",
        [Lit(w.shape[0], "num_embeddings"), Lit(w.shape[1], "embedding_dim")],
        kwargs + _dtype_kw([w]),
    )
    return LayerMatch(ctor, [x], v.out(node), params=["weight"])


# -- stateless layers: activations, pooling, dropout, flatten ----------------------------------


def _simple(cls: str, ops: dict[str, Callable[[_View, Node], list]]):
    """A stateless layer: ``ops`` maps each accepted op to its keyword arguments."""

    def match(v: _View) -> LayerMatch:
        x = v.only_input()
        node = v.single(*ops)
        first = node.inputs[0].arg if node.inputs else None
        v.require(first is not None and first.kind is ArgKind.TENSOR and first.value.name == x)
        kwargs = ops[_op(node)](v, node)
        return LayerMatch(Ctor(f"nn.{cls}", [], kwargs), [x], v.out(node))

    match.__name__ = f"_{cls.lower()}"
    return match


def _none(v: _View, node: Node) -> list:
    return []


def _inplace(v: _View, node: Node) -> list:
    return [("inplace", Lit(True, "inplace"))]


def _defaults(**defaults):
    """Keyword arguments read from the node, left out at their defaults."""

    def read(v: _View, node: Node) -> list:
        out = []
        for name, default in defaults.items():
            value = v.value(node, name, default)
            if isinstance(value, (list, tuple)):
                value = tuple(value)
            if value != default:
                out.append((name, Lit(value, name)))
        return out

    return read


def _both(*readers):
    def read(v: _View, node: Node) -> list:
        return [kw for r in readers for kw in r(v, node)]

    return read


for _cls, _name in [
    ("ReLU", "relu"),
    ("Hardswish", "hardswish"),
    ("Hardsigmoid", "hardsigmoid"),
    ("SiLU", "silu"),
    ("Mish", "mish"),
    ("SELU", "selu"),
]:
    layer(_cls)(_simple(_cls, {f"{_name}.default": _none, f"{_name}_.default": _inplace}))
for _cls, _name in [("Sigmoid", "sigmoid"), ("Tanh", "tanh")]:
    layer(_cls)(_simple(_cls, {f"{_name}.default": _none}))
layer("GELU")(_simple("GELU", {"gelu.default": _defaults(approximate="none")}))
layer("LeakyReLU")(
    _simple(
        "LeakyReLU",
        {
            "leaky_relu.default": _defaults(negative_slope=0.01),
            "leaky_relu_.default": _both(_defaults(negative_slope=0.01), _inplace),
        },
    )
)
layer("ELU")(_simple("ELU", {"elu.default": _defaults(alpha=1.0)}))


def _relu6(v: _View, node: Node) -> list:
    if _op(node).startswith("hardtanh"):
        v.require(v.value(node, "min_val") == 0 and v.value(node, "max_val") == 6)
    return _inplace(v, node) if _op(node).endswith("_.default") else []


layer("ReLU6")(
    _simple(
        "ReLU6",
        {
            "hardtanh.default": _relu6,
            "hardtanh_.default": _relu6,
            "relu6.default": _relu6,
            "relu6_.default": _relu6,
        },
    )
)
layer("Hardtanh")(_simple("Hardtanh", {"hardtanh.default": _defaults(min_val=-1.0, max_val=1.0)}))


def _softmax_dim(v: _View, node: Node) -> list:
    v.require(v.value(node, "half_to_float", False) is False and v.value(node, "dtype") is None)
    return [("dim", Lit(v.value(node, "dim"), "dim"))]


layer("Softmax")(
    _simple("Softmax", {"softmax.int": _softmax_dim, "_softmax.default": _softmax_dim})
)
layer("LogSoftmax")(
    _simple("LogSoftmax", {"log_softmax.int": _softmax_dim, "_log_softmax.default": _softmax_dim})
)
layer("Flatten")(_simple("Flatten", {"flatten.using_ints": _defaults(start_dim=1, end_dim=-1)}))


def _dropout(v: _View, node: Node) -> list:
    if _op(node) == "clone.default":
        # core ATen writes an eval-mode dropout as a copy; its p is not recorded
        v.require(v.value(node, "memory_format") in (None, "preserve_format"))
        return []
    v.require(v.value(node, "train") is False)
    kwargs = _defaults(p=0.5)(v, node)
    return kwargs + (_inplace(v, node) if _op(node).endswith("_.default") else [])


layer("Dropout")(
    _simple(
        "Dropout",
        {"dropout.default": _dropout, "dropout_.default": _dropout, "clone.default": _dropout},
    )
)
for _rank in (1, 2, 3):
    layer(f"Dropout{_rank}d")(
        _simple(
            f"Dropout{_rank}d", {"feature_dropout.default": _dropout, "clone.default": _dropout}
        )
    )


def _pool_args(v: _View, node: Node, names: tuple[str, ...], defaults: dict) -> tuple[list, list]:
    kernel = tuple(v.value(node, "kernel_size"))
    args = [Lit(_compact(kernel), "kernel_size")]
    kwargs = []
    stride = tuple(v.value(node, "stride", ()) or ())
    if stride and stride != kernel:
        kwargs.append(("stride", Lit(_compact(stride), "stride")))
    for name in names:
        value = v.value(node, name, defaults[name])
        value = tuple(value) if isinstance(value, (list, tuple)) else value
        if value != defaults[name] and not (
            isinstance(value, tuple) and set(value) == {defaults[name]}
        ):
            kwargs.append((name, Lit(_compact(value) if isinstance(value, tuple) else value, name)))
    return args, kwargs


def _max_pool(v: _View) -> LayerMatch:
    rank = _class_rank(v)
    x = v.only_input()
    node = v.single(f"max_pool{rank}d.default", f"max_pool{rank}d_with_indices.default")
    v.require(v.value(node, "self") == x)
    args, kwargs = _pool_args(
        v,
        node,
        ("padding", "dilation", "ceil_mode"),
        {"padding": 0, "dilation": 1, "ceil_mode": False},
    )
    return LayerMatch(Ctor(f"nn.MaxPool{rank}d", args, kwargs), [x], v.out(node))


def _avg_pool(v: _View) -> LayerMatch:
    rank = _class_rank(v)
    x = v.only_input()
    node = v.single(f"avg_pool{rank}d.default")
    v.require(v.value(node, "self") == x)
    args, kwargs = _pool_args(
        v,
        node,
        ("padding", "ceil_mode", "count_include_pad", "divisor_override"),
        {"padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
    )
    return LayerMatch(Ctor(f"nn.AvgPool{rank}d", args, kwargs), [x], v.out(node))


def _adaptive_avg_pool(v: _View) -> LayerMatch:
    rank = _class_rank(v)
    x = v.only_input()
    node = v.single(
        f"adaptive_avg_pool{rank}d.default", f"_adaptive_avg_pool{rank}d.default", "mean.dim"
    )
    v.require(v.value(node, "self") == x)
    if _op(node) == "mean.dim":
        # core ATen's global average pool: the mean over the last `rank` dims, kept
        dims = sorted(int(d) for d in v.value(node, "dim", ()))
        v.require(
            dims == list(range(-rank, 0))
            and v.value(node, "keepdim") is True
            and v.value(node, "dtype") is None
        )
        size = 1
    else:
        size = _compact(tuple(v.value(node, "output_size")))
    return LayerMatch(
        Ctor(f"nn.AdaptiveAvgPool{rank}d", [Lit(size, "output_size")]), [x], v.out(node)
    )


def _adaptive_max_pool(v: _View) -> LayerMatch:
    rank = _class_rank(v)
    x = v.only_input()
    node = v.single(f"adaptive_max_pool{rank}d.default")
    v.require(v.value(node, "self") == x)
    size = _compact(tuple(v.value(node, "output_size")))
    return LayerMatch(
        Ctor(f"nn.AdaptiveMaxPool{rank}d", [Lit(size, "output_size")]), [x], v.out(node)
    )


for _rank in (1, 2, 3):
    layer(f"MaxPool{_rank}d")(_max_pool)
    layer(f"AvgPool{_rank}d")(_avg_pool)
    layer(f"AdaptiveAvgPool{_rank}d")(_adaptive_avg_pool)
    layer(f"AdaptiveMaxPool{_rank}d")(_adaptive_max_pool)


# -- recurrent layers --------------------------------------------------------------------------


def _rnn_weight_names(layers: int, directions: int, bias: bool) -> list[str]:
    names = []
    for k in range(layers):
        for d in range(directions):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            names += [f"weight_ih{suffix}", f"weight_hh{suffix}"]
            if bias:
                names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
    return names


def _recurrent(cls: str, ops: dict[str, list], states: int):
    """LSTM/GRU/RNN as export keeps them: the ``aten.<op>.input`` node, with the zero initial
    states the layer makes itself when none is passed. ``ops`` maps each accepted op to the
    constructor keywords it implies (``nonlinearity="relu"``)."""

    def match(v: _View) -> LayerMatch:
        main = [n for n in v.nodes if _op(n) in ops]
        zeros = [n for n in v.nodes if _op(n) == "zeros.default"]
        v.require(len(main) == 1 and len(zeros) + 1 == len(v.nodes))
        node = main[0]
        x = v.value(node, "input")
        hx = v.value(node, "hx")
        hx = hx if isinstance(hx, list) else [hx]
        v.require(len(hx) == states)
        zero_outs = {v.out(z) for z in zeros}
        if zero_outs:
            v.require(set(hx) == zero_outs and len(zero_outs) == states)  # no initial state passed
            call_args = [x]
        else:
            call_args = [x] + hx
        v.require(v.call.inputs == call_args)
        layers = v.value(node, "num_layers")
        bidirectional = bool(v.value(node, "bidirectional"))
        bias = bool(v.value(node, "has_biases"))
        names = _rnn_weight_names(layers, 2 if bidirectional else 1, bias)
        params = v.value(node, "params")
        v.require(len(params) == len(names) and v.value(node, "train") is False)
        entries = [v.own(p, n) for p, n in zip(params, names)]
        kwargs: list = [(k, Lit(val, k)) for k, val in ops[_op(node)]]
        if layers != 1:
            kwargs.append(("num_layers", Lit(layers, "num_layers")))
        if not bias:
            kwargs.append(("bias", Lit(False, "bias")))
        if v.value(node, "batch_first"):
            kwargs.append(("batch_first", Lit(True, "batch_first")))
        dropout = v.value(node, "dropout", 0.0)
        if dropout:
            kwargs.append(("dropout", Lit(float(dropout), "dropout")))
        if bidirectional:
            kwargs.append(("bidirectional", Lit(True, "bidirectional")))
        ctor = Ctor(
            f"nn.{cls}",
            [Lit(entries[0].shape[1], "input_size"), Lit(entries[1].shape[1], "hidden_size")],
            kwargs + _dtype_kw(entries),
        )
        outs = [v.out(node, i) for i in range(1 + states)]
        pattern = (outs[0], tuple(outs[1:])) if states > 1 else tuple(outs)
        return LayerMatch(ctor, call_args, pattern, params=names, state_tuple=states > 1)

    match.__name__ = f"_{cls.lower()}"
    return match


layer("LSTM")(_recurrent("LSTM", {"lstm.input": []}, 2))
layer("GRU")(_recurrent("GRU", {"gru.input": []}, 1))
layer("RNN")(
    _recurrent("RNN", {"rnn_tanh.input": [], "rnn_relu.input": [("nonlinearity", "relu")]}, 1)
)


# -- attention ---------------------------------------------------------------------------------

_CONTIGUOUS = ("contiguous.default", "clone.default")
_VIEW = ("view.default", "reshape.default", "_unsafe_view.default")


def _mha_steps(q_in: str) -> list:
    """nn.MultiheadAttention's slow path for self-attention (query is key is value), no
    masks, ``need_weights=False``, as torch 2.6+ traces it; ``q_in`` is the sequence-first
    input."""
    E, L, B, H, BH, hd, LB = (Cap(n) for n in ("E", "L", "B", "H", "BH", "hd", "LB"))
    return [
        (
            "linear.default",
            {"input": q_in, "weight": Own("in_proj_weight"), "bias": Own("in_proj_bias")},
        ),
        ("unflatten.int", {"self": Out(0), "dim": -1, "sizes": (3, E)}),
        ("unsqueeze.default", {"self": Out(1), "dim": 0}),
        ("transpose.int", {"self": Out(2), "dim0": 0, "dim1": -2}),
        ("squeeze.dim", {"self": Out(3), "dim": -2}),
        (_CONTIGUOUS, {"self": Out(4)}),
        ("select.int", {"self": Out(5), "dim": 0, "index": 0}),
        ("select.int", {"self": Out(5), "dim": 0, "index": 1}),
        ("select.int", {"self": Out(5), "dim": 0, "index": 2}),
        (_VIEW, {"self": Out(6), "size": (L, BH, hd)}),  # 9: q
        ("transpose.int", {"self": Out(9), "dim0": 0, "dim1": 1}),
        (_VIEW, {"self": Out(7), "size": (L, BH, hd)}),  # 11: k
        ("transpose.int", {"self": Out(11), "dim0": 0, "dim1": 1}),
        (_VIEW, {"self": Out(8), "size": (L, BH, hd)}),  # 13: v
        ("transpose.int", {"self": Out(13), "dim0": 0, "dim1": 1}),
        (_VIEW, {"self": Out(10), "size": (B, H, L, hd)}),
        (_VIEW, {"self": Out(12), "size": (B, H, L, hd)}),
        (_VIEW, {"self": Out(14), "size": (B, H, L, hd)}),
        (
            "scaled_dot_product_attention.default",  # 18
            {"query": Out(15), "key": Out(16), "value": Out(17), "attn_mask": None},
        ),
        ("permute.default", {"self": Out(18), "dims": (2, 0, 1, 3)}),
        (_VIEW, {"self": Out(19), "size": (LB, E)}),
        (
            "linear.default",
            {"input": Out(20), "weight": Own("out_proj.weight"), "bias": Own("out_proj.bias")},
        ),
        (_VIEW, {"self": Out(21), "size": (L, B, E)}),
    ]


@layer("MultiheadAttention")
def _multihead_attention(v: _View) -> LayerMatch:
    x = v.only_input()
    batch_first = bool(v.nodes) and v.ops[0] == "transpose.int" and v.value(v.nodes[0], "self") == x
    start = 1 if batch_first else 0
    if batch_first:
        first, _ = v.sequence([("transpose.int", {"self": x, "dim0": 1, "dim1": 0})])
        q_in = first[0]
    else:
        q_in = x
    steps = _mha_steps(q_in)
    outs, cap = v.sequence(steps, start)
    v.require(len(v.nodes) == start + len(steps) + (1 if batch_first else 0))
    out = outs[-1]
    if batch_first:
        last, _ = v.sequence(
            [("transpose.int", {"self": out, "dim0": 1, "dim1": 0})], start + len(steps)
        )
        out = last[0]
    node = v.nodes[start + 18]
    v.require(
        v.value(node, "dropout_p", 0.0) == 0.0
        and v.value(node, "scale") is None
        and not v.value(node, "is_causal", False)
        and not v.value(node, "enable_gqa", False)
    )
    weight = v.own(v.value(v.nodes[start], "weight"), "in_proj_weight")
    embed, heads = cap["E"], cap["H"]
    v.require(all(isinstance(c, int) for c in cap.values()))
    v.require(
        weight.shape == (3 * embed, embed)
        and heads * cap["hd"] == embed
        and cap["BH"] == cap["B"] * heads
        and cap["LB"] == cap["L"] * cap["B"]
    )
    params = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    entries = [
        v.own(v.value(v.nodes[start + i], n), a)
        for i, n, a in (
            (0, "weight", "in_proj_weight"),
            (0, "bias", "in_proj_bias"),
            (21, "weight", "out_proj.weight"),
            (21, "bias", "out_proj.bias"),
        )
    ]
    kwargs = [("batch_first", Lit(True, "batch_first"))] if batch_first else []
    ctor = Ctor(
        "nn.MultiheadAttention",
        [Lit(embed, "embed_dim"), Lit(heads, "num_heads")],
        kwargs + _dtype_kw(entries),
    )
    # called through the function below, not as `self.self_attn(x, x, x, need_weights=False)[0]`
    return LayerMatch(ctor, [x], out, params=params, function="multihead_self_attention")


# nn.MultiheadAttention.forward takes a fused kernel (torch._native_multi_head_attention) where
# no gradient is needed: under torch.no_grad() or torch.inference_mode() in eval mode. It rounds
# differently from the ops export recorded, which are the layer's slow path: the functional call
# that path makes, with the layer's own parameters, gives the archive's outputs in every grad
# mode while the module keeps a standard nn.MultiheadAttention (and its state-dict names).
FUNCTIONS["multihead_self_attention"] = '''def multihead_self_attention(attention, x):
    """``attention(x, x, x, need_weights=False)[0]``, computed as the archive records it.

    Where no gradient is needed (``torch.no_grad()``, ``torch.inference_mode()``) the
    layer's own forward takes a fused fast path that rounds differently; this is the
    functional call its other path makes, the same in every grad mode.
    """
    if attention.batch_first:
        x = x.transpose(1, 0)
    out, _ = F.multi_head_attention_forward(
        x,
        x,
        x,
        attention.embed_dim,
        attention.num_heads,
        attention.in_proj_weight,
        attention.in_proj_bias,
        attention.bias_k,
        attention.bias_v,
        attention.add_zero_attn,
        attention.dropout,
        attention.out_proj.weight,
        attention.out_proj.bias,
        training=attention.training,
        need_weights=False,
    )
    return out.transpose(1, 0) if attention.batch_first else out'''
