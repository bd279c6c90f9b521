"""Generated code for every higher-order op the interpreter runs, run and compared.

Each program is exported here (training IR and core ATen), saved, turned into source by
``to_python``, executed, and its outputs compared with the exporting module's own (``ep.module()``,
the program the archive holds) and with the interpreter's. Higher-order ops torch 2.13 does not
write on a CPU (``wrap``, ``invoke_subgraph``, ``tag_activation_checkpoint``, the
``associative_scan`` op itself) are written into an archive by hand, as the serializer spells them.
Where codegen has no Python for an op, it says so naming the node.
"""

from __future__ import annotations

import copy
import json
import zipfile

import pytest
import torch
from fixture_cases import release
from helpers import export_or_skip, program_member, rewrite_zip, save_or_skip

import pt2interp
from pt2interp.codegen import to_python


def build(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "generated.py", "exec"), namespace)  # noqa: S102 (our own output, under test)
    return namespace


# Loop bodies read parameters: with gradients on (as these tests run the generated code), torch's
# own higher-order kernels trace their functions, which the generated code must allow.


class TenSteps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        from torch._higher_order_ops.while_loop import while_loop

        return while_loop(
            lambda i, y: i < 10, lambda i, y: (i + 1, torch.tanh(self.lin(y))), (torch.tensor(0), x)
        )


class MapRows(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.randn(3))

    def forward(self, xs, y):
        from torch._higher_order_ops.map import map as map_rows

        return map_rows(lambda x, y: x * y * self.scale + 1, xs, y)


class Scan(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.decay = torch.nn.Parameter(torch.full((3,), 0.5))

    def forward(self, init, xs):
        from torch._higher_order_ops.scan import scan

        def step(carry, x):
            new = carry * self.decay + x
            return new, new * 2

        return scan(step, init, xs)


class GenericAssociativeScan(torch.nn.Module):
    """Training IR writes the generic combine as vmap calls (functorch's own, see
    ops/functorch.py)."""

    def forward(self, x):
        from torch._higher_order_ops.associative_scan import associative_scan

        return associative_scan(lambda a, b: a * b + b, x, dim=0, combine_mode="generic")


class VMap(torch.nn.Module):
    def forward(self, x, y):
        return torch.vmap(lambda a, b: (a * b).sum(), in_dims=(0, None))(x, y)


class NestedVMap(torch.nn.Module):
    def forward(self, x):
        return torch.vmap(torch.vmap(lambda a: a.sin() * 2))(x)


class Jvp(torch.nn.Module):
    def forward(self, x, t):
        return torch.func.jvp(torch.sin, (x,), (t,))


class NoGrad(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x) * 2
        return y + x


class EnableGradInsideNoGrad(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        with torch.no_grad():
            with torch.enable_grad():
                y = self.lin(x).sin()
            z = y.cos()
        return z, y


class Autocast(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.lin(x)
        return y.float() + 1


class Hints(torch.nn.Module):
    def forward(self, x):
        from torch._higher_order_ops.hints_wrap import hints_wrapper

        return hints_wrapper(lambda a: (a.cos() + 1,), (x,), {}, hints={"unroll": True})[0]


class OutDtype(torch.nn.Module):
    def forward(self, a, b):
        from torch._higher_order_ops.out_dtype import out_dtype

        return out_dtype(torch.ops.aten.mm.default, torch.int32, a, b)


@torch.library.custom_op("pt2interp_tests::scale_", mutates_args={"x"})
def _scale_(x: torch.Tensor, k: float) -> None:
    x.mul_(k)


@_scale_.register_fake
def _(x, k):
    return None


class MutatingCustomOp(torch.nn.Module):
    """Core ATen wraps the mutating op in auto_functionalized(_v2)."""

    def forward(self, x):
        y = x.clone()
        _scale_(y, 3.0)
        return y + 1


class Print(torch.nn.Module):
    """torch's print op (core ATen threads it through with_effects): never formatted."""

    def forward(self, x):
        from torch._higher_order_ops.print import print as print_op

        print_op("x is {x} \x1b[2J", x=x)
        return x + 1


def _ints(*shape):
    return torch.randint(-5, 5, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(0))


CASES = {
    "while_loop": (TenSteps, lambda: (torch.randn(3),)),
    "map": (MapRows, lambda: (torch.randn(4, 3), torch.randn(3))),
    "scan": (Scan, lambda: (torch.zeros(3), torch.randn(5, 3))),
    "associative_scan": (GenericAssociativeScan, lambda: (torch.randn(5, 3),)),
    "vmap": (VMap, lambda: (torch.randn(4, 3), torch.randn(3))),
    "nested_vmap": (NestedVMap, lambda: (torch.randn(2, 3, 4),)),
    "jvp": (Jvp, lambda: (torch.randn(3), torch.randn(3))),
    "no_grad": (NoGrad, lambda: (torch.randn(2, 3),)),
    "enable_grad": (EnableGradInsideNoGrad, lambda: (torch.randn(2, 3),)),
    "autocast": (Autocast, lambda: (torch.randn(2, 4),)),
    "hints_wrapper": (Hints, lambda: (torch.randn(3),)),
    "out_dtype": (OutDtype, lambda: (_ints(3, 4), _ints(4, 2))),
    "auto_functionalized": (MutatingCustomOp, lambda: (torch.randn(3),)),
    "print": (Print, lambda: (torch.randn(3),)),
}


def _flat(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("ir", ["training", "core"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_code_runs_and_equals_the_archive(tmp_path, name, ir, capsys):
    if name == "map" and release(torch.__version__) < (2, 6):
        pytest.skip(f"torch {torch.__version__}'s map_impl traces its function when called eagerly")
    make, args = CASES[name]
    torch.manual_seed(0)
    module, inputs = make(), args()
    ep = export_or_skip(module, inputs)
    if ir == "core":
        ep = ep.run_decompositions()
    path = save_or_skip(ep, tmp_path / f"{name}.pt2")
    want = _flat(ep.module()(*inputs))
    namespace = build(to_python(path))
    capsys.readouterr()
    got = _flat(namespace["from_pt2"](path)(*inputs))
    printed = capsys.readouterr().out
    interpreted = _flat(pt2interp.load(path)(*inputs))
    assert printed == capsys.readouterr().out  # what the program prints, printed alike
    assert "\x1b" not in printed
    if name == "print":
        assert printed.startswith("x is {x} \\x1b[2J x=tensor(")
    assert len(got) == len(want) == len(interpreted)
    for g, w, i in zip(got, want, interpreted):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
        torch.testing.assert_close(i, w, rtol=0, atol=0)


# -- higher-order ops torch does not write on a CPU, spelled as its serializer spells them ---------


def _body(inputs: list[str]) -> dict:
    """A subgraph adding its inputs (or taking the sine of one), float32 vectors of 3."""
    meta = {
        "dtype": 7,
        "sizes": [{"as_int": 3}],
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }
    if len(inputs) == 1:
        node = {
            "target": "torch.ops.aten.sin.default",
            "name": "out",
            "metadata": {},
            "inputs": [{"name": "self", "arg": {"as_tensor": {"name": inputs[0]}}, "kind": 1}],
            "outputs": [{"as_tensor": {"name": "out"}}],
        }
    else:
        node = {
            "target": "torch.ops.aten.add.Tensor",
            "name": "out",
            "metadata": {},
            "inputs": [
                {"name": "self", "arg": {"as_tensor": {"name": inputs[0]}}, "kind": 1},
                {"name": "other", "arg": {"as_tensor": {"name": inputs[1]}}, "kind": 1},
            ],
            "outputs": [{"as_tensor": {"name": "out"}}],
        }
    return {
        "inputs": [{"as_tensor": {"name": n}} for n in inputs],
        "outputs": [{"as_tensor": {"name": "out"}}],
        "nodes": [node],
        "tensor_values": {n: meta for n in [*inputs, "out"]},
        "sym_int_values": {},
        "sym_bool_values": {},
        "sym_float_values": {},
        "custom_obj_values": {},
        "is_single_tensor_return": False,
    }


def _positional(arg: dict) -> dict:
    return {"name": "", "arg": arg, "kind": 1}


def _hop_archive(tmp_path, target: str, inputs: list[dict]) -> tuple:
    """An archive of ``x -> target(...)`` made from an exported ``hints_wrapper`` program."""
    ep = export_or_skip(Hints(), (torch.randn(3),))
    src = save_or_skip(ep, tmp_path / "template.pt2")
    member = program_member(src)
    with zipfile.ZipFile(src) as z:
        doc = json.loads(z.read(member))
    (node,) = [
        n for n in doc["graph_module"]["graph"]["nodes"] if n["target"].endswith("hints_wrapper")
    ]
    node["target"] = f"torch.ops.higher_order.{target}"
    node["inputs"] = copy.deepcopy(inputs)
    node["metadata"] = {}
    return rewrite_zip(src, tmp_path / f"{target}.pt2", replace={member: json.dumps(doc).encode()})


_X = {"as_tensor": {"name": "x"}}
HAND_WRITTEN = {
    "wrap": (
        [_positional({"as_graph": {"name": "wrap_body", "graph": _body(["a"])}}), _positional(_X)],
        torch.sin,
    ),
    "tag_activation_checkpoint": (
        [
            _positional({"as_graph": {"name": "checkpointed", "graph": _body(["a"])}}),
            _positional(_X),
        ],
        torch.sin,
    ),
    "invoke_subgraph": (
        [
            _positional({"as_graph": {"name": "repeated", "graph": _body(["a"])}}),
            _positional({"as_string": "subgraph_0"}),
            _positional(_X),
        ],
        torch.sin,
    ),
    "associative_scan": (
        [
            _positional({"as_graph": {"name": "combine", "graph": _body(["a", "b"])}}),
            _positional({"as_tensors": [{"name": "x"}]}),
            _positional({"as_tensors": []}),
        ],
        lambda x: torch.cumsum(x, 0),
    ),
}


@pytest.mark.parametrize("target", sorted(HAND_WRITTEN))
def test_generated_code_for_hand_written_higher_order_ops(tmp_path, target):
    inputs, expected = HAND_WRITTEN[target]
    path = _hop_archive(tmp_path, target, inputs)
    x = torch.randn(3)
    try:
        interpreted = pt2interp.load(path)(x)
    except pt2interp.UnsupportedOpError as exc:  # an older torch without the op
        pytest.skip(str(exc)[:200])
    got = build(to_python(path))["from_pt2"](path)(x)
    torch.testing.assert_close(interpreted, expected(x))
    torch.testing.assert_close(got, interpreted, rtol=0, atol=0)


def test_an_op_codegen_cannot_write_is_refused_naming_the_node(tmp_path):
    path = _hop_archive(
        tmp_path,
        "flex_attention",
        [
            _positional(_X),
            _positional(_X),
            _positional(_X),
            _positional({"as_graph": {"name": "score_mod", "graph": _body(["a"])}}),
        ],
    )
    (label,) = [
        n.label
        for n in pt2interp.read_program(path).graph.nodes
        if n.target.endswith("flex_attention")
    ]  # hints_wrapper here; torch 2.10 names the template's node after its output, getitem
    with pytest.raises(pt2interp.UnsupportedOpError, match=rf"node {label}\b.*flex_attention"):
        to_python(path)
