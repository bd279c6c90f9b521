"""``benchmarks/big_graph.py``: the large synthetic archives are valid programs that run and give
what the same chain gives in plain torch (here at a few hundred nodes)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixture_cases import torch_loads_or_skip

import pt2interp
from pt2interp.program import read_program

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks.big_graph

from benchmarks.big_graph import reference, write_big_archive  # noqa: E402


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    return write_big_archive(tmp_path_factory.mktemp("big") / "nested.pt2", 200)


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return write_big_archive(tmp_path_factory.mktemp("big") / "flat.pt2", 200, flat=True)


def _tree_depth(node) -> int:
    return 1 + max((_tree_depth(c) for c in node.children), default=-1)


def test_nested_archive_reads_with_every_node_in_its_module(nested):
    prog = read_program(nested.path)
    nodes = list(prog.graph.iter_nodes())
    assert len(nodes) == nested.nodes == 200
    assert nested.units == 66 and nested.fanout == 5  # 66 units: 5**3 >= 66 > 4**3

    # root + stages.i + blocks.j + layers.k + act|mix; fc1/fc2 sit right below the root
    depths = {len(n.nn_module_stack) for n in nodes}
    assert depths == {2, 5} and nested.depth == 4
    relu = next(n for n in nodes if n.name == "relu")
    assert [f.fqn for f in relu.nn_module_stack] == [
        "",
        "stages.0",
        "stages.0.blocks.0",
        "stages.0.blocks.0.layers.0",
        "stages.0.blocks.0.layers.0.act",
    ]
    assert [f.class_name for f in relu.nn_module_stack] == [
        "BigModel",
        "Stage",
        "Block",
        "Layer",
        "ReLU",
    ]
    assert all(n.metadata.get("stack_trace") for n in nodes)

    schema = pt2interp.read_schema(nested.path)
    assert sum(schema.op_histogram.values()) == 200
    assert schema.op_histogram == {
        "torch.ops.aten.linear.default": 2,
        "torch.ops.aten.relu.default": 33,
        "torch.ops.aten.tanh.default": 33,
        "torch.ops.aten.add.Tensor": 66,
        "torch.ops.aten.mul.Tensor": 66,
    }
    # the module tree splits paths at dots: stages / 0 / blocks / 0 / layers / 0 / act
    assert _tree_depth(schema.module_tree) == 7
    assert schema.totals.parameter_count == 16 * 32 + 32 + 32 * 8 + 8  # the source's weights


def test_flat_archive_has_only_the_root_module(flat):
    prog = read_program(flat.path)
    nodes = list(prog.graph.iter_nodes())
    assert len(nodes) == 200
    assert {tuple(f.fqn for f in n.nn_module_stack) for n in nodes} == {("",)}
    assert flat.depth == 0 and flat.modules == 0
    schema = pt2interp.read_schema(flat.path)
    # no module but the root is named by a node: fc1 and fc2 come only from parameter names
    assert [(m.fqn, m.class_name) for m in schema.module_tree.children] == [
        ("fc1", None),
        ("fc2", None),
    ]


def test_every_output_has_its_tensor_value_and_the_output_is_the_last_node(nested):
    import json
    import zipfile

    with zipfile.ZipFile(nested.path) as z:
        (member,) = [n for n in z.namelist() if n.endswith("/models/model.json")]
        doc = json.loads(z.read(member))
    graph = doc["graph_module"]["graph"]
    outs = [o["as_tensor"]["name"] for n in graph["nodes"] for o in n["outputs"]]
    assert len(set(outs)) == len(outs) == 200
    assert set(graph["tensor_values"]) == set(outs) | {
        "x",
        "p_fc1_weight",
        "p_fc1_bias",
        "p_fc2_weight",
        "p_fc2_bias",
    }
    last = graph["nodes"][-1]["outputs"][0]
    assert graph["outputs"] == [last]
    assert doc["graph_module"]["signature"]["output_specs"][0]["user_output"]["arg"] == last
    fqns = [e["fqn"] for e in doc["graph_module"]["module_call_graph"]]
    assert fqns[:4] == ["", "fc1", "stages", "stages.0"] and len(set(fqns)) == len(fqns)


@pytest.mark.parametrize("nodes", [200, 101, 3])
@pytest.mark.parametrize("is_flat", [False, True], ids=["nested", "flat"])
def test_it_runs_and_matches_plain_torch(tmp_path, nodes, is_flat):
    info = write_big_archive(tmp_path / "big.pt2", nodes, flat=is_flat)
    prog = pt2interp.load(info.path)
    gen = torch.Generator().manual_seed(nodes)
    x = torch.randn(4, 16, generator=gen)
    want = reference(x, prog.state_dict(), nodes)
    torch.testing.assert_close(prog(x), want, rtol=0, atol=0)
    # the chain keeps its input: another input gives another answer
    assert not torch.allclose(prog(x + 1), want)


def test_torch_itself_loads_it(nested):
    ep = torch_loads_or_skip(nested.path)
    x = torch.randn(4, 16)
    want = reference(x, pt2interp.load(nested.path).state_dict(), nested.nodes)
    torch.testing.assert_close(ep.module()(x), want, rtol=0, atol=0)


def test_script(tmp_path):
    out = tmp_path / "s.pt2"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "big_graph.py"), str(out), "--nodes", "50"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "50 nodes" in done.stdout
    assert len(list(read_program(out).graph.iter_nodes())) == 50


def test_too_few_nodes(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        write_big_archive(tmp_path / "x.pt2", 2)
