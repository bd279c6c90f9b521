"""The interpreter's fast bindings dispatch exactly the overload the graph names.

For every op in ``ops.fast.FAST_METHODS``, a one-node graph is compiled for every combination of
argument kinds its schema allows as the serializer writes them (tensors of eight dtypes, strided
and not, broadcasting and 0-d; Python ints, floats, bools, complex numbers and symbolic numbers in
Tensor positions, a number first included; int lists with symbolic entries). The plan and the
``torch.ops`` overload are run under a mode that records every ATen call: the recorded calls
(overload and arguments) must be identical, and so must the results, bit for bit.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pt2interp.ops.fast import FAST_METHODS, fast_kernel
from pt2interp.ops.registry import resolve_torch_op
from pt2interp.schema import Argument, Graph, NamedArgument, Node, Ref


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, _describe(args), _describe(kwargs)))
        return func(*args, **kwargs)


def _describe(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.stride())
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _describe(v)) for k, v in sorted(value.items()))
    return value


# -- every argument kind the schema allows, as the serializer writes it ------------------------

_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.bool,
    torch.complex64,
)
# A Tensor argument may hold a Python number in a graph (core ATen writes aten.sub.Tensor(1.0, x),
# aten.mul.Tensor(x, s0)): each kind below is one the serializer writes for a Tensor position.
_NUMBERS = (
    ("int", 3),
    ("float", 0.5),
    ("bool", True),
    ("complex", 1 + 2j),
    ("sym_int", 2),
    ("sym_float", 1.5),
)


def _tensor(shape, dtype, g, transposed=False):
    if transposed:
        return _tensor(shape[:-2] + (shape[-1], shape[-2]), dtype, g).transpose(-1, -2)
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    if dtype == torch.bool:
        return t > 0
    if not dtype.is_floating_point and not dtype.is_complex:
        return t.round().to(dtype).abs() + 1  # no zero divisors: int division by 0 is not the point
    return (t.abs() + 0.1).to(dtype)  # log, sqrt, rsqrt of positives: NaN is not the point


def _shapes(name: str):
    """(self shape, other shape) pairs the op accepts, one of them broadcasting."""
    if name == "mm":
        return [((3, 4), (4, 5))]
    if name == "bmm":
        return [((2, 3, 4), (2, 4, 5))]
    if name == "matmul":
        return [((3, 4), (4, 5)), ((2, 3, 4), (4,)), ((4,), (4,))]
    return [((3, 4), (4,)), ((3, 4), ())]


def _variants(op, name):
    """Every (argument kinds, values) combination the schema's positional arguments allow."""
    g = torch.Generator().manual_seed(0)
    params = [a for a in op._schema.arguments if not a.kwarg_only]
    combos = []
    for self_shape, other_shape in _shapes(name):
        selves = [
            ("tensor", _tensor(self_shape, d, g, transposed))
            for d in _DTYPES
            for transposed in ((False, True) if len(self_shape) >= 2 else (False,))
        ]
        selves += list(_NUMBERS)
        rest = []
        for p in params[1:]:
            kind = str(p.type)
            if kind == "Tensor":
                rest.append(
                    [("tensor", _tensor(other_shape, d, g)) for d in _DTYPES] + list(_NUMBERS)
                )
            elif kind == "int":
                rest.append([("int", 1), ("int", -1), ("sym_int", 0)])
            elif kind == "List[int]":
                dims = [1, 0] if name == "permute" else [4, 3]
                rest.append([("ints", dims), ("ints", [-1]), ("sym_ints", dims)])
            else:
                raise AssertionError(f"{op}: no samples for argument {p.name}: {kind}")
        combos += [[s, *r] for s in selves for r in itertools.product(*rest)]
    return params, combos


def _graph_for(target, params, combo):
    """A one-node graph calling ``target`` with these argument kinds; sym values are graph
    inputs."""
    inputs, node_args, runtime = [], [], []
    for i, (p, (kind, value)) in enumerate(zip(params, combo)):
        if kind in ("tensor", "sym_int", "sym_float"):
            inputs.append(Argument(kind, Ref(f"in{i}")))
            runtime.append(value)
            arg = Argument(kind, Ref(f"in{i}"))
        elif kind == "sym_ints":  # a size taken from an input: the first entry symbolic
            inputs.append(Argument("sym_int", Ref(f"in{i}")))
            runtime.append(value[0])
            arg = Argument(kind, (Ref(f"in{i}"), *value[1:]))
        else:
            arg = Argument(kind, tuple(value) if kind == "ints" else value)
        node_args.append(NamedArgument(p.name, arg, 1))
    node = Node(f"torch.ops.{target}", node_args, [Argument("tensor", Ref("out"))], {})
    return Graph(inputs, [Argument("tensor", Ref("out"))], [node], {}), runtime


def _direct_args(combo):
    return [
        v.clone() if isinstance(v, torch.Tensor) else list(v) if isinstance(v, list) else v
        for _, v in combo
    ]


def _outcome(fn, args):
    """(recorded ATen calls, result, args after the call) or the exception fn raised."""
    try:
        with torch.inference_mode(), _Recorder() as rec:
            result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - torch raises NotImplementedError, TypeError, ...
        return exc
    return rec.calls, result, args


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("target", sorted(FAST_METHODS))
def test_fast_binding_dispatches_the_same_overload_for_every_argument_kind(target):
    """The plan the interpreter compiles for a node of ``target``, over every kind the schema's
    arguments take (tensors of each dtype and layout, Python and symbolic numbers, int lists with
    symbolic entries), records the same ATen calls as the overload called directly, and returns the
    same result bit for bit; where the overload fails, the plan fails too."""
    from pt2interp.interpreter import GraphCompiler

    op = resolve_torch_op("torch.ops." + target)
    fast = fast_kernel(target, 1)
    assert fast is not None
    name = target.split(".")[1].rstrip("_")
    params, combos = _variants(op, name)
    took_fast = 0
    for combo in combos:
        where = f"{target}{tuple((k, _describe(v)) for k, v in combo)}"
        graph, runtime = _graph_for(target, params, combo)
        plan = GraphCompiler().compile(graph)
        kernel = getattr(
            plan.steps[0].kernel, "__wrapped__", plan.steps[0].kernel
        )  # view's fallback wraps it
        if combo[0][0] != "tensor":
            assert kernel is not fast, (
                f"{where}: a Tensor method bound to a node whose first argument is a number"
            )
        took_fast += kernel is fast
        got = _outcome(
            lambda *a, plan=plan: plan.run(list(a))[0],
            [v.clone() if isinstance(v, torch.Tensor) else v for v in runtime],
        )
        want = _outcome(op, _direct_args(combo))
        if name == "view" and isinstance(want, Exception) and "reshape" in str(want):
            # a view of a layout export did not see runs as a reshape (test_devices.py): the
            # overload is tried first, and the result is the reshape's
            assert not isinstance(got, Exception) and got[0][0][0] is op, where
            torch.testing.assert_close(
                got[1], runtime[0].reshape(combo[1][1]), rtol=0, atol=0, msg=where
            )
            continue
        if isinstance(want, Exception):
            assert isinstance(got, Exception), (
                f"{where}: the overload fails ({want}), the plan does not"
            )
            continue
        assert not isinstance(got, Exception), (
            f"{where}: the plan fails ({got!r}), the overload does not"
        )
        assert got[0] == want[0], f"{where}: {got[0]} != {want[0]}"
        assert got[0][0][0] is op, where
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0, equal_nan=True, msg=where)
        if (
            name != target.split(".")[1] and combo[0][0] == "tensor"
        ):  # in-place: the input written alike
            torch.testing.assert_close(
                got[2][0], want[2][0], rtol=0, atol=0, equal_nan=True, msg=where
            )
    assert took_fast > len(combos) // 4, (
        f"{target}: the fast binding ran for only {took_fast} of {len(combos)}"
    )


def test_nodes_with_keyword_arguments_keep_the_overload():
    from pt2interp.interpreter import GraphCompiler

    node = Node(
        "torch.ops.aten.add.Tensor",
        [
            NamedArgument("self", Argument("tensor", Ref("x"))),
            NamedArgument("other", Argument("tensor", Ref("y"))),
            NamedArgument("alpha", Argument("int", 2), 2),
        ],
        [Argument("tensor", Ref("z"))],
        {},
    )
    graph = Graph(
        [Argument("tensor", Ref("x")), Argument("tensor", Ref("y"))],
        [Argument("tensor", Ref("z"))],
        [node],
        {},
    )
    plan = GraphCompiler().compile(graph)
    assert plan.steps[0].kernel is not torch.Tensor.add
    x, y = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(plan.run([x, y])[0], torch.add(x, y, alpha=2), rtol=0, atol=0)


@pytest.mark.parametrize(
    "target", ["aten.sub.Tensor", "aten.add.Tensor", "aten.mul.Tensor", "aten.div.Tensor"]
)
def test_a_scalar_first_argument_runs_the_overload_itself(tmp_path, target):
    """Core ATen's bicubic interpolation writes aten.sub.Tensor(1.0, x): no Tensor method takes
    a float first, so such a node runs the overload."""
    import json
    import zipfile

    from fixture_cases import case
    from helpers import member_named, rewrite_zip

    import pt2interp

    src = case("zoo", "mlp").path
    member = member_named(src, "models/model.json")
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    graph = doc["graph_module"]["graph"]
    graph["nodes"] = [
        {
            "target": f"torch.ops.{target}",
            "metadata": {},
            "inputs": [
                {"name": "self", "arg": {"as_float": 1.5}, "kind": 1},
                {"name": "other", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
            ],
            "outputs": [{"as_tensor": {"name": "linear_1"}}],
        }
    ]
    path = rewrite_zip(
        src, tmp_path / "scalar_first.pt2", replace={member: json.dumps(doc).encode()}
    )
    x = torch.randn(4, 16)
    overload = getattr(torch.ops.aten, target.split(".")[1]).Tensor
    torch.testing.assert_close(pt2interp.load(path)(x), overload(1.5, x), rtol=0, atol=0)
