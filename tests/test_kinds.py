"""Issue: argument kinds and spec kinds are one typed table that every consumer asks."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from fixture_cases import release
from torch._export.serde import schema as torch_schema

from pt2interp import schema
from pt2interp.errors import SchemaError
from pt2interp.kinds import ArgKind, InputKind, OutputKind
from pt2interp.schema import Argument, CustomObjRef, Device, GraphArgument, Ref, parser


def _tags(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_argument_kinds_are_torchs_argument_union():
    tags = [kind.tag for kind in ArgKind]
    assert len(tags) == len(set(tags))
    # every kind this torch writes; on the release the kinds were written from (or a later
    # one) nothing more (older releases lack a few)
    assert set(_tags(torch_schema.Argument)) <= set(tags)
    if release(torch.__version__) >= (2, 13):
        assert sorted(tags) == sorted(_tags(torch_schema.Argument))
    for kind in ArgKind:
        assert kind.tag == "as_" + kind.value
        assert ArgKind.of_tag(kind.tag) is kind
        assert ArgKind(kind.value) is kind


def test_spec_kinds_are_torchs_spec_unions():
    # every kind this torch writes; from the release the kinds were written from, no more
    for ours, union in ((InputKind, torch_schema.InputSpec), (OutputKind, torch_schema.OutputSpec)):
        assert set(_tags(union)) <= {k.value for k in ours}
        if release(torch.__version__) >= (2, 13):
            assert sorted(k.value for k in ours) == sorted(_tags(union))


@pytest.mark.parametrize("kind", [*InputKind, *OutputKind])
def test_target_fields_are_torchs(kind):
    union = torch_schema.InputSpec if isinstance(kind, InputKind) else torch_schema.OutputSpec
    hints = typing.get_type_hints(union)
    if kind.value not in hints:
        pytest.skip(f"torch {torch.__version__} writes no {kind.value} spec")
    fields = _tags(hints[kind.value])
    named = [f for f in fields if f.endswith("_name")]
    assert named == ([] if kind.target_field is None else [kind.target_field])


def test_list_kinds_name_their_elements():
    for kind in ArgKind:
        if kind.is_list:
            leaf = kind.leaf.value
            if kind.element is kind.leaf:
                assert kind.value == leaf + "s"
            else:  # a list of lists
                assert kind.value in (leaf + "_lists", "nested_" + leaf + "s")
            assert not kind.leaf.is_list
        else:
            assert kind.leaf is kind
    assert ArgKind.NESTED_TENSORS.element is ArgKind.TENSORS
    assert ArgKind.FLOAT_LISTS.leaf is ArgKind.FLOAT
    assert ArgKind.SYM_BOOLS.element is ArgKind.SYM_BOOL


def test_every_kind_that_is_no_list_has_a_value_parser():
    assert parser._VALUE_PARSERS.keys() == {k for k in ArgKind if not k.is_list}


REFS = [
    (ArgKind.NONE, None, []),
    (ArgKind.TENSOR, Ref("x"), ["x"]),
    (ArgKind.TENSORS, (Ref("a"), Ref("b")), ["a", "b"]),
    (ArgKind.OPTIONAL_TENSOR, None, []),
    (ArgKind.OPTIONAL_TENSOR, Ref("x"), ["x"]),
    (ArgKind.OPTIONAL_TENSORS, (Ref("a"), None, Ref("c")), ["a", "c"]),
    (ArgKind.NESTED_TENSORS, ((Ref("a"),), (), (Ref("b"), Ref("c"))), ["a", "b", "c"]),
    (ArgKind.INT, 3, []),
    (ArgKind.INTS, (1, 2), []),
    (ArgKind.INT_LISTS, ((1,), (2, 3)), []),
    (ArgKind.FLOAT, 1.5, []),
    (ArgKind.FLOATS, (1.5,), []),
    (ArgKind.FLOAT_LISTS, ((1.5,),), []),
    (ArgKind.BOOL, True, []),
    (ArgKind.BOOLS, (True, False), []),
    (ArgKind.STRING, "name", []),
    (ArgKind.STRINGS, ("a", "b"), []),
    (ArgKind.COMPLEX, 1 + 2j, []),
    (ArgKind.SYM_INT, Ref("s0"), ["s0"]),
    (ArgKind.SYM_INT, 4, []),
    (ArgKind.SYM_INTS, (Ref("s0"), 4, Ref("s1")), ["s0", "s1"]),
    (ArgKind.SYM_FLOAT, Ref("f"), ["f"]),
    (ArgKind.SYM_FLOATS, (0.5, Ref("f")), ["f"]),
    (ArgKind.SYM_BOOL, Ref("b"), ["b"]),
    (ArgKind.SYM_BOOLS, (True, Ref("b")), ["b"]),
    (ArgKind.SCALAR_TYPE, "float32", []),
    (ArgKind.MEMORY_FORMAT, "contiguous_format", []),
    (ArgKind.LAYOUT, "strided", []),
    (ArgKind.DEVICE, Device("cpu"), []),
    (ArgKind.GRAPH, GraphArgument("g", schema.Graph([], [], [], {})), []),
    (ArgKind.CUSTOM_OBJ, CustomObjRef("obj", "__torch__.Foo"), ["obj"]),
    (ArgKind.OPERATOR, "aten.add.Tensor", []),
    (
        ArgKind.STRING_TO_ARGUMENT,
        {"a": Argument(ArgKind.TENSOR, Ref("x")), "b": Argument(ArgKind.INT, 1)},
        ["x"],
    ),
]


def test_refs_cases_cover_every_kind():
    assert {kind for kind, _, _ in REFS} == set(ArgKind)


@pytest.mark.parametrize(("kind", "value", "names"), REFS, ids=lambda x: str(x)[:20])
def test_refs_per_kind(kind, value, names):
    assert Argument(kind, value).refs() == names
    assert Argument(kind.value, value).refs() == names  # spelled as a string: the same kind


def test_argument_kind_spelled_as_a_string_is_the_enum():
    arg = Argument("tensor", Ref("x"))
    assert arg.kind is ArgKind.TENSOR and arg == Argument(ArgKind.TENSOR, Ref("x"))
    assert arg.kind == "tensor" and str(arg.kind) == "tensor" and f"{arg.kind}" == "tensor"
    with pytest.raises(ValueError, match="tensr"):
        Argument("tensr", Ref("x"))


ARG = "graph_module.graph.nodes[0].inputs[0].arg"


def _program(arg=None, input_spec=None, output_spec=None) -> schema.ExportedProgramModel:
    """A one-node program holding ``arg`` as the node's input, or the given specs."""
    node = {"target": "torch.ops.aten.clone.default", "inputs": [], "outputs": []}
    if arg is not None:
        node["inputs"] = [{"name": "self", "arg": arg}]
    doc = {
        "schema_version": {"major": 8, "minor": 0},
        "graph_module": {
            "graph": {"inputs": [], "outputs": [], "nodes": [node]},
            "signature": {
                "input_specs": [input_spec] if input_spec else [],
                "output_specs": [output_spec] if output_spec else [],
            },
        },
    }
    return schema.parse_exported_program(doc, "models/model.json")


def _argument(raw) -> Argument:
    return _program(raw).graph.nodes[0].inputs[0].arg


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        ({"as_tensor": {"name": "x"}}, ArgKind.TENSOR, Ref("x")),  # the fast path
        ({"as_ints": [1, 2]}, ArgKind.INTS, (1, 2)),
        ({"as_int_lists": [[1, 2], [3]]}, ArgKind.INT_LISTS, ((1, 2), (3,))),  # checked
        ({"as_sym_bools": [{"as_bool": True}]}, ArgKind.SYM_BOOLS, (True,)),
        ({"as_layout": 7}, ArgKind.LAYOUT, "strided"),
        ({"as_complex": {"real": 1.0, "imag": 2}}, ArgKind.COMPLEX, 1 + 2j),
    ],
)
def test_parsed_kinds_are_the_enums(raw, kind, value):
    arg = _argument(raw)
    assert arg.kind is kind and arg.value == value


def test_parsed_spec_kinds_are_the_enums():
    model = _program(
        input_spec={"buffer": {"arg": {"name": "b"}, "buffer_name": "bn"}},
        output_spec={"user_input_mutation": {"arg": {"name": "y"}, "user_input_name": "x"}},
    )
    (spec,) = model.signature.input_specs
    assert spec.kind is InputKind.BUFFER and spec.target == "bn" and spec.persistent is True
    (out,) = model.signature.output_specs
    assert out.kind is OutputKind.USER_INPUT_MUTATION and out.target == "x"
    assert out.arg == Argument(ArgKind.TENSOR, Ref("y"))
    assert model.signature.inputs_of(InputKind.BUFFER) == model.signature.inputs_of("buffer")


def test_unknown_argument_tag_names_the_path():
    with pytest.raises(SchemaError) as info:
        _argument({"as_tensr": {"name": "x"}})
    assert info.value.path == ARG and info.value.member == "models/model.json"
    assert "unknown argument kind 'as_tensr'" in str(info.value)


def test_unknown_spec_tags_name_the_path():
    with pytest.raises(SchemaError, match="unknown input spec kind 'weight'") as info:
        _program(input_spec={"weight": {"arg": {"name": "w"}}})
    assert info.value.path == "graph_module.signature.input_specs[0]"
    with pytest.raises(SchemaError, match="unknown output spec kind 'loss'") as info:
        _program(output_spec={"loss": {"arg": {"name": "l"}}})
    assert info.value.path == "graph_module.signature.output_specs[0]"
    with pytest.raises(SchemaError, match="missing required field 'parameter_name'") as info:
        _program(input_spec={"parameter": {"arg": {"name": "w"}}})
    assert info.value.path == "graph_module.signature.input_specs[0].parameter.parameter_name"


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        ({"as_ints": [1, "2"]}, ".as_ints[1]", "expected an integer, got string"),
        ({"as_int_lists": [[1], 2]}, ".as_int_lists[1]", "expected a list, got integer"),
        ({"as_float_lists": [[1.0, None]]}, ".as_float_lists[0][1]", "expected a number"),
        ({"as_nested_tensors": [[{"name": 1}]]}, ".as_nested_tensors[0][0].name", "a string"),
        ({"as_sym_floats": [{"as_int": 1}]}, ".as_sym_floats[0]", "SymFloatArgument kind"),
        ({"as_memory_format": 99}, ".as_memory_format", "unknown MemoryFormat 99"),
        ({"as_layout": 99}, ".as_layout", "unknown Layout 99"),
        ({"as_custom_obj": {}}, ".as_custom_obj.name", "missing required field 'name'"),
        ({"as_graph": {"name": "g"}}, ".as_graph.graph", "missing required field 'graph'"),
        ({"as_string_to_argument": {"k": {"as_x": 1}}}, ".as_string_to_argument.k", "as_x"),
    ],
)
def test_element_errors_name_the_element(raw, path, message):
    with pytest.raises(SchemaError, match=message) as info:
        _argument(raw)
    assert info.value.path == ARG + path
