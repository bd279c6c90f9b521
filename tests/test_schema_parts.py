"""Unit tests of the torch-free parts: symbolic expressions, tree specs, module paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pt2interp.errors import InputMismatchError, SchemaError
from pt2interp.schema import normalize_module_path, parse_nn_module_stack
from pt2interp.symexpr import parse_expr
from pt2interp.treespec import parse_treespec


@pytest.mark.parametrize(
    "text, env, value, rendered",
    [
        ("s0", {"s0": 4}, 4, "s0"),
        ("2*s0 + 1", {"s0": 3}, 7, "2*s0 + 1"),
        ("Symbol('s77', positive=True, integer=True)", {"s77": 5}, 5, "s77"),
        ("Mul(Integer(2), Symbol('s77', positive=True, integer=True))", {"s77": 5}, 10, "2*s77"),
        ("Add(Symbol('s0', integer=True), Integer(-1))", {"s0": 5}, 4, "s0 - 1"),
        ("FloorDiv(Symbol('s0'), Integer(2))", {"s0": 9}, 4, "s0//2"),
        ("Max(Integer(1), Symbol('s1'))", {"s1": 0}, 1, "max(1, s1)"),
    ],
)
def test_symbolic_expressions(text, env, value, rendered):
    e = parse_expr(text)
    assert e.evaluate(env) == value
    assert str(e) == rendered


@pytest.mark.parametrize(
    "text", ["__import__('os').system('x')", "s0.attr", "lambda: 1", "[1]", "f(1)"]
)
def test_symbolic_expressions_refuse_anything_else(text):
    with pytest.raises(SchemaError):
        parse_expr(text, member="m.json", path="p")


@given(st.integers(-1000, 1000), st.integers(1, 50), st.integers(0, 20))
def test_rendered_expressions_evaluate_the_same(a, b, s):
    e = parse_expr(f"Add(Mul(Integer({b}), Symbol('s0')), Integer({a}))")
    assert parse_expr(str(e)).evaluate({"s0": s}) == e.evaluate({"s0": s}) == b * s + a


LEAF = {"type": None, "context": None, "children_spec": []}


def _spec(node):
    import json

    return json.dumps([1, node])


def test_treespec_dict_tuple_namedtuple_none():
    spec = parse_treespec(
        _spec(
            {
                "type": "builtins.tuple",
                "context": "null",
                "children_spec": [
                    {
                        "type": "builtins.dict",
                        "context": '["a", "b"]',
                        "children_spec": [LEAF, LEAF],
                    },
                    {
                        "type": "collections.namedtuple",
                        "context": "mod.Point",
                        "children_spec": [LEAF, LEAF],
                    },
                    {"type": "builtins.NoneType", "context": None, "children_spec": []},
                    {"type": "builtins.list", "context": "null", "children_spec": [LEAF]},
                ],
            }
        ),
        namedtuple_fields={"mod.Point": ["x", "y"]},
    )
    assert spec.num_leaves == 5
    value = spec.unflatten([1, 2, 3, 4, 5])
    assert value[0] == {"a": 1, "b": 2}
    assert value[1].x == 3 and value[1].y == 4 and type(value[1]).__name__ == "Point"
    assert value[2] is None and value[3] == [5]
    assert spec.flatten(value) == [1, 2, 3, 4, 5]


def test_treespec_mismatch_is_an_input_error():
    spec = parse_treespec(
        _spec({"type": "builtins.dict", "context": '["a"]', "children_spec": [LEAF]})
    )
    with pytest.raises(InputMismatchError, match="missing"):
        spec.flatten({"b": 1})


def test_treespec_unknown_type_is_refused_not_imported():
    with pytest.raises(SchemaError, match="os.system"):
        parse_treespec(
            _spec({"type": "os.system", "context": None, "children_spec": []}), member="m", path="p"
        )


@pytest.mark.parametrize(
    "path, fqn",
    [
        ("L['self'].layer1", "layer1"),
        ("getattr(L['s'].net, '0')", "net.0"),
        ("L['self'].layers[0].conv", "layers.0.conv"),
        ("layer1.0.conv1", "layer1.0.conv1"),
        ("", ""),
        ("L['self']", ""),
    ],
)
def test_module_paths(path, fqn):
    assert normalize_module_path(path) == fqn


def test_nn_module_stack_with_commas_in_paths():
    text = (
        "L__self__,,__main__.MLP;L__s___net,L['s'].net,torch.nn.modules.container.Sequential;"
        "L__s___net_0,getattr(L['s'].net, '0'),torch.nn.modules.linear.Linear"
    )
    frames = parse_nn_module_stack(text)
    assert [f.fqn for f in frames] == ["", "net", "net.0"]
    assert frames[-1].class_name == "Linear"


def test_exports_placeholder_stack_is_no_module():
    # torch writes this stand-in on nodes it makes itself (an input's sym_size): no module ran them
    empty = "_empty_nn_module_stack_from_metadata_hook"
    assert parse_nn_module_stack(f"{empty},{empty},{empty}") == []
    frames = parse_nn_module_stack(f"L__self__,,m.M;{empty},{empty},{empty}")
    assert [f.fqn for f in frames] == [""]
