"""The interpreter's fast bindings dispatch exactly the overload the graph names.

For every op in ``ops.fast.FAST_METHODS`` and several argument shapes (tensor/tensor with
broadcasting, tensor/int, tensor/float, integer dtypes), the Tensor method and the ``torch.ops``
overload are run under a mode that records every ATen call: the recorded calls (overload and
arguments) must be identical, and so must the results, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from pt2interp.ops.fast import FAST_METHODS, fast_kernel
from pt2interp.ops.registry import resolve_torch_op
from torch.utils._python_dispatch import TorchDispatchMode


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


def _samples(target: str):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g), torch.randn(4, generator=g)
    ia, ib = torch.randint(1, 9, (3, 4), generator=g), torch.randint(1, 9, (4,), generator=g)
    name = target.split(".")[1].rstrip("_")
    if name in ("add", "sub", "mul", "div"):
        return [(a, b), (a, a.clone()), (a, 2), (a, 0.5), (ia, ib), (ia, 3), (ia, 2.5)]
    if name in ("view", "reshape"):
        return [(a, [4, 3]), (a, [-1]), (a, [2, 6])]
    if name == "permute":
        return [(a, [1, 0])]
    if name == "transpose":
        return [(a, 0, 1), (a, -1, 0)]
    if name == "unsqueeze":
        return [(a, 0), (a, -1)]
    if name == "t":
        return [(a,)]
    if name == "mm":
        return [(a, torch.randn(4, 5, generator=g))]
    if name == "bmm":
        return [(torch.randn(2, 3, 4, generator=g), torch.randn(2, 4, 5, generator=g))]
    if name == "matmul":
        return [(a, torch.randn(4, 5, generator=g)), (torch.randn(2, 3, 4, generator=g), b)]
    positive = a.abs() + 0.1 if name in ("log", "sqrt", "rsqrt", "reciprocal") else a
    return [(positive,), (positive.t(),)]


def _clone(args):
    return tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in args)


@pytest.mark.parametrize("target", sorted(FAST_METHODS))
def test_fast_binding_dispatches_the_same_overload(target):
    op = resolve_torch_op("torch.ops." + target)
    fast = fast_kernel(target, 1)
    assert fast is not None
    for args in _samples(target):
        with torch.inference_mode():
            ref_args, fast_args = _clone(args), _clone(args)
            try:
                with _Recorder() as want_calls:
                    want = op(*ref_args)
            except RuntimeError as exc:  # an invalid combination must fail the same way
                with pytest.raises(RuntimeError, match=str(exc).splitlines()[0][:40]):
                    fast(*fast_args)
                continue
            with _Recorder() as got_calls:
                got = fast(*fast_args)
        assert got_calls.calls == want_calls.calls, f"{target}{_describe(args)}"
        assert got_calls.calls[0][0] is op
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(fast_args, ref_args, rtol=0, atol=0)  # in-place ops mutate alike


def test_nodes_with_keyword_arguments_keep_the_overload():
    from pt2interp.interpreter import GraphCompiler
    from pt2interp.schema import Argument, Graph, NamedArgument, Node, Ref

    node = Node("torch.ops.aten.add.Tensor",
                [NamedArgument("self", Argument("tensor", Ref("x"))), NamedArgument("other", Argument("tensor", Ref("y"))),
                 NamedArgument("alpha", Argument("int", 2), 2)],
                [Argument("tensor", Ref("z"))], {})
    graph = Graph([Argument("tensor", Ref("x")), Argument("tensor", Ref("y"))], [Argument("tensor", Ref("z"))], [node], {})
    plan = GraphCompiler().compile(graph)
    assert plan.steps[0].kernel is not torch.Tensor.add
    x, y = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(plan.run([x, y])[0], torch.add(x, y, alpha=2), rtol=0, atol=0)


@pytest.mark.parametrize("target", ["aten.sub.Tensor", "aten.add.Tensor", "aten.mul.Tensor", "aten.div.Tensor"])
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
    graph["nodes"] = [{"target": f"torch.ops.{target}", "metadata": {},
                       "inputs": [{"name": "self", "arg": {"as_float": 1.5}, "kind": 1},
                                  {"name": "other", "arg": {"as_tensor": {"name": "x"}}, "kind": 1}],
                       "outputs": [{"as_tensor": {"name": "linear_1"}}]}]
    path = rewrite_zip(src, tmp_path / "scalar_first.pt2", replace={member: json.dumps(doc).encode()})
    x = torch.randn(4, 16)
    overload = getattr(torch.ops.aten, target.split(".")[1]).Tensor
    torch.testing.assert_close(pt2interp.load(path)(x), overload(1.5, x), rtol=0, atol=0)
