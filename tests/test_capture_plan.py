"""The CUDA-graph capture plan, checked on the CPU against what running the program shows.

The plan is decided from the graph alone. The oracle runs the program (on the CPU, twice, the
second time with other float inputs of the same shapes) and watches for what a CUDA graph
cannot replay: a tensor value read on the host (``.item()``, ``bool(tensor)``, seen by a
dispatch mode), random numbers drawn (the generator's state moves),
and a node whose output size changes with the data. The tables of random and host-sync ops are
checked against the running torch's own op tags.
"""

from __future__ import annotations

import pytest
import torch
from fixture_cases import all_cases, case, load_or_skip
from torch.utils._python_dispatch import TorchDispatchMode

import pt2interp
from pt2interp.capture_plan import HOST_SYNC_OPS, RANDOM_OPS, RANDOM_WHEN, plan_capture
from pt2interp.program import read_program


def _aten_overloads():
    # every aten op this torch has (``dir(torch.ops.aten)`` lists only those touched so far)
    names = {
        n[len("aten::") :].split(".")[0]
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("aten::")
    }
    for name in sorted(n for n in names if n.isidentifier()):
        try:
            packet = getattr(torch.ops.aten, name)
        except (AttributeError, RuntimeError):
            continue
        if not hasattr(packet, "overloads"):
            continue
        for overload in packet.overloads():
            yield f"aten.{name}", getattr(packet, overload)


def test_tables_agree_with_torchs_tags():
    host, seeded = set(), set()
    for name, op in _aten_overloads():
        if torch.Tag.data_dependent_output in op.tags:
            host.add(name)
        if torch.Tag.nondeterministic_seeded in op.tags:
            seeded.add(name)
    # nothing this torch tags is missing (the direction that keeps capture safe) ...
    assert host <= HOST_SYNC_OPS
    assert seeded <= RANDOM_OPS | set(RANDOM_WHEN)
    # ... and, on the release the tables were written from, nothing is there it does not tag
    # (other releases tag a few ops more or fewer; later ones have ops it lacks)
    known = {name for name, _ in _aten_overloads()}
    if torch.__version__.startswith("2.13."):
        assert host == HOST_SYNC_OPS
        assert RANDOM_OPS <= seeded and set(RANDOM_WHEN) & known <= seeded
    for name, (p, train) in RANDOM_WHEN.items():
        if name not in known:
            continue  # an op of another torch release
        packet = getattr(torch.ops.aten, name.split(".", 1)[1])
        for overload in packet.overloads():
            args = {a.name for a in getattr(packet, overload)._schema.arguments}
            for wanted in (p, train):
                assert wanted is None or wanted in args, (name, overload, wanted)


# what a Python-level read of a tensor's value dispatches (``.item()``, ``bool(t)``, ``int(t)``,
# ``torch.equal``): the dispatch mode sees these composite ops before they decompose
_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
}


class _Watch(TorchDispatchMode):
    supports_higher_order_operators = True  # scan passes through, its body's ops are seen

    def __init__(self):
        super().__init__()
        self.host_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            self.host_reads += 1
        return func(*args, **(kwargs or {}))


def _other_inputs(args, kwargs):
    # drawn from a generator of its own: the same values whatever ran before (a data-dependent
    # size must come out different from the first run's, every time)
    gen = torch.Generator().manual_seed(20)

    def other(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return torch.randn(v.shape, generator=gen, dtype=v.dtype) * 3
        if isinstance(v, (list, tuple)):
            return type(v)(other(x) for x in v)
        if isinstance(v, dict):
            return {k: other(x) for k, x in v.items()}
        return v

    return other(args), other(kwargs)


def _what_running_shows(c) -> dict[int, set[str]]:
    """What two CPU runs of the program show a CUDA graph could not replay, node by node
    (top-level node index → findings): a host read or random numbers drawn while the node ran
    (seen between its report and the one before), or an output size that changed between the
    runs while the sizes of the node's inputs (and the host values it reads) did not: the node
    made it depend on the data."""
    prog = load_or_skip(c)
    graph = prog.program.model.graph
    index_of = {r: i for i, n in enumerate(graph.nodes) for out in n.outputs for r in out.refs()}
    args, kwargs = c.inputs()
    shows: dict[int, set[str]] = {}
    shapes = []
    for call_args, call_kwargs in (args, kwargs), _other_inputs(args, kwargs):
        seen = {}
        watch = _Watch()
        # the generator's state as bytes: comparing tensors would be a host read the watch sees
        last = {"reads": 0, "rng": torch.get_rng_state().numpy().tobytes()}

        def on_node(name, target, value, seen=seen, watch=watch, last=last):
            if isinstance(value, torch.Tensor):
                seen[name] = tuple(value.shape)
            elif isinstance(value, (int, float, bool)):
                seen[name] = value  # a size read on the host: what later sizes follow
            i = index_of[name]
            if watch.host_reads > last["reads"]:
                shows.setdefault(i, set()).add("host read")
                last["reads"] = watch.host_reads
            if torch._C._functorch.maybe_current_level() is not None:
                return  # inside vmap or jvp the state is a wrapped tensor: read it at the end
            rng = torch.get_rng_state().numpy().tobytes()
            if rng != last["rng"]:
                shows.setdefault(i, set()).add("random")
                last["rng"] = rng

        try:
            with watch:
                prog.run(*call_args, on_node=on_node, **call_kwargs)
        except pt2interp.ExecutionError as exc:
            if "There was no rule registered for HOP" not in str(exc):
                raise
            pytest.skip(f"torch {torch.__version__} runs this op under no dispatch mode: {exc}")
        shapes.append(seen)
    first, second = shapes
    for i, node in enumerate(graph.nodes):
        outs = [r for out in node.outputs for r in out.refs() if r in first]
        ins = [r for na in node.inputs for r in na.arg.refs() if r in first]
        if any(first[r] != second.get(r) for r in outs) and all(
            first[r] == second.get(r) for r in ins
        ):
            shows.setdefault(i, set()).add("size depends on data")
    return shows


@pytest.mark.parametrize("c", all_cases(), ids=lambda c: c.id)
def test_verdict_matches_what_running_shows(c):
    """The verdict, and each segment boundary: every node running shows to need the host is a
    blocker, and every blocker is such a node (but effects and script objects, which a run on
    the CPU does not show)."""
    plan = plan_capture(read_program(c.path).model)
    shows = _what_running_shows(c)
    if plan.verdict == "whole":
        assert not shows, f"the plan says whole, but running shows {shows}"
        return
    assert shows, f"the plan says {plan.verdict} ({plan.reasons}), running shows nothing"
    blocked = {
        int(b.where.split("[")[1].split("]")[0]): b.why
        for b in plan.blockers
        if b.where.startswith("graph.nodes[")
    }
    assert set(shows) <= set(blocked), f"no blocker at {set(shows) - set(blocked)}: {shows}"
    for i, why in blocked.items():
        if "side effects" not in why:
            assert i in shows, f"graph.nodes[{i}] is a blocker ({why}), running shows nothing"
    # the segments are the runs between those nodes, every other node in exactly one
    covered = [i for a, b in plan.segments for i in range(a, b)]
    nodes = len(read_program(c.path).model.graph.nodes)
    assert sorted(covered) == [i for i in range(nodes) if i not in blocked]


def test_blockers_and_segments_name_the_nodes():
    plan = plan_capture(read_program(case("zoo", "data_dependent").path).model)
    assert plan.verdict == "eager"
    whys = {b.where.split(" ")[0]: b.why for b in plan.blockers}
    graph = read_program(case("zoo", "data_dependent").path).model.graph
    targets = {f"graph.nodes[{i}]": n.target for i, n in enumerate(graph.nodes)}
    for where, why in whys.items():
        target = targets[where]
        if "masked_select" in target or "nonzero" in target:
            assert why.startswith("output size depends on the data")
        else:
            assert "_local_scalar_dense" in target or "item" in target, target
    # segments: the runs between blockers, covering every other node exactly once
    blocked = {int(w.split("[")[1].split("]")[0]) for w in whys}
    covered = [i for a, b in plan.segments for i in range(a, b)]
    assert sorted(covered) == [i for i in range(len(graph.nodes)) if i not in blocked]


def test_whole_programs_have_one_segment():
    plan = plan_capture(read_program(case("zoo", "mini_gpt").path).model)
    nodes = read_program(case("zoo", "mini_gpt").path).model.graph.nodes
    assert plan.verdict == "whole" and plan.segments == ((0, len(nodes)),)


def test_dropout_decides_by_its_arguments(tmp_path):
    from pt2interp.schema import Argument, NamedArgument, Node

    def node(target, **args):
        kinds = {bool: "bool", float: "float", int: "int"}
        inputs = [NamedArgument(k, Argument(kinds[type(v)], v)) for k, v in args.items()]
        return Node(f"torch.ops.{target}.default", inputs, [], {}, "n")

    from pt2interp.capture_plan import _why_blocked
    from pt2interp.schema import Graph

    g = Graph([], [], [], {})
    assert _why_blocked(node("aten.native_dropout", p=0.1, train=True), g, "aten.native_dropout")
    assert not _why_blocked(
        node("aten.native_dropout", p=0.1, train=False), g, "aten.native_dropout"
    )
    assert not _why_blocked(
        node("aten.native_dropout", p=0.0, train=True), g, "aten.native_dropout"
    )
    sdpa = "aten._scaled_dot_product_flash_attention_for_cpu"
    assert not _why_blocked(node(sdpa), g, sdpa)
    assert _why_blocked(node(sdpa, dropout_p=0.2), g, sdpa)
    assert not _why_blocked(node("aten.lstm", dropout=0.5, train=False), g, "aten.lstm")
    assert _why_blocked(node("aten.rand"), g, "aten.rand")


def test_info_prints_the_verdict_and_its_reasons(capsys):
    import json

    from pt2interp.cli import main

    assert main(["info", str(case("zoo", "data_dependent").path)]) == 0
    out = capsys.readouterr().out
    assert "CUDA graphs: runs eagerly, because" in out
    assert "graph.nodes[7] (nonzero): output size depends on the data (u1)" in out
    assert main(["info", "--json", str(case("zoo", "tiny_resnet").path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cuda_graphs"]["verdict"] == "whole" and doc["cuda_graphs"]["reasons"] == []
