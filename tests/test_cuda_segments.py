"""CUDA graphs around blockers: a program one graph cannot hold runs its long runs of nodes as
graphs of their own (:mod:`pt2interp.cuda_segments`). On any machine through
:class:`EagerReplay` (a "replay" runs the segment again into the same static tensors); with a
GPU (``pytest -m cuda``) the real capture, against eager runs of the same program.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import requires_cuda
from fixture_cases import all_cases, load_or_skip, release
from helpers import export_or_skip, save_or_skip

import pt2interp
from pt2interp.capture_plan import CapturePlan, plan_capture
from pt2interp.cuda_graphs import EagerReplay
from pt2interp.program import read_program


def _segmented(path, plan=None, *, min_segment_nodes=1, **options):
    prog = pt2interp.load(path, **options)
    prog.capture_plan = plan or plan_capture(
        prog.program.model, min_segment_nodes=min_segment_nodes
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plan with nothing to capture warns: tested elsewhere
        prog._start_graphs(EagerReplay())
    return prog


def _close(want, got, tol=None):
    """torch's float tolerances by default (integers exact): a segment hands on copies of its
    values, which lie elsewhere in memory than the eager run's, and some CPU kernels round the
    last bit by address (seen: an LSTM's ``bmm``, 3e-8 apart)."""
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True)


def _other_inputs(c):
    """The case's inputs with other values (same shapes and dtypes): bools and integers
    shuffled, floats drawn afresh, so data-dependent sizes change."""

    gen = torch.Generator().manual_seed(21)  # the same values whatever ran before

    def other(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return torch.randn(v.shape, generator=gen, dtype=v.dtype) * 2
        if isinstance(v, torch.Tensor) and v.numel() > 1:
            return v.flatten()[torch.randperm(v.numel(), generator=gen)].reshape(v.shape)
        if isinstance(v, (list, tuple)):
            return type(v)(other(x) for x in v)
        if isinstance(v, dict):
            return {k: other(x) for k, x in v.items()}
        return v

    args, kwargs = c.inputs()
    return other(args), other(kwargs)


_BLOCKED = [c for c in all_cases() if plan_capture(read_program(c.path).model).verdict != "whole"]


@pytest.mark.parametrize("c", _BLOCKED, ids=lambda c: c.id)
def test_every_blocked_fixture_runs_in_segments_as_eagerly(c):
    """Each program a graph cannot hold whole, with every run between blockers captured (the
    shortest included), equals its eager runs call after call, on its own inputs and others."""
    eager = load_or_skip(c)
    prog = _segmented(c.path)
    calls = [c.inputs(), _other_inputs(c), c.inputs()]
    for args, kwargs in calls:
        _close(eager(*args, **kwargs), prog(*args, **kwargs))
    info = prog.cuda_graphs_info()
    assert info["verdict"] == "segments"
    pieces = info["pieces"]
    # the pieces cover the program in order, and each captured segment replayed every call
    assert pieces[0]["nodes"][0] == 0 and pieces[-1]["nodes"][1] == len(eager.program.graph.nodes)
    assert all(p["nodes"][1] == q["nodes"][0] for p, q in zip(pieces, pieces[1:]))
    graphs = [p for p in pieces if p["runs"] == "graphs"]
    assert graphs, pieces
    assert all(p["replays"] == len(calls) for p in graphs)
    # and the subgraphs of a cond or while_loop as often as the op ran them
    replayed = [s for s in info["subgraphs"] if s["runs"] == "graphs"]
    assert info["replays"] == len(calls) * len(graphs) + sum(s["replays"] for s in replayed)


class _GatedBody(torch.nn.Module):
    """A body long enough for a graph, a host read in the middle, a head after it."""

    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(4):
            layers += [torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.LayerNorm(16)]
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(16, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        h = self.body(x)
        self.calls.add_(1)
        kept = (h > 0).sum().item()
        torch._check(kept >= 0)
        torch._check(kept <= h.numel())
        return self.head(h) * kept + self.calls


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    torch.manual_seed(0)
    ep = export_or_skip(_GatedBody().eval(), (torch.randn(3, 16),))
    return save_or_skip(ep, tmp_path_factory.mktemp("gated") / "gated.pt2")


def test_a_long_run_before_a_host_read_is_one_graph(gated):
    prog = pt2interp.load(gated)
    plan = prog.capture_plan
    assert plan.verdict == "segments", plan
    assert any("host" in r for r in plan.reasons)
    (first, end), *_ = plan.captured
    assert first == 0 and end >= 12  # the body, before the item
    eager = pt2interp.load(gated)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # segments are no reason to warn
        graphs = _segmented(gated, plan)
    for _ in range(3):
        x = torch.randn(3, 16)
        _close(eager(x), graphs(x))
    # the buffer advanced as in eager runs, and the body captured once, replayed since
    assert torch.equal(graphs.state_dict()["calls"], eager.state_dict()["calls"])
    info = graphs.cuda_graphs_info()
    body = next(p for p in info["pieces"] if p["runs"] == "graphs")
    assert (body["captures"], body["replays"]) == (1, 3)


def test_capturing_ahead_runs_nothing_observable(gated):
    graphs = _segmented(gated, min_segment_nodes=8)
    x = torch.randn(3, 16)
    kept = x.clone()
    assert graphs.capture(x) is True and graphs.capture(x) is False
    assert torch.equal(x, kept)
    assert int(graphs.state_dict()["calls"]) == 0  # the capture's run was undone
    before = graphs.cuda_graphs_info()["captures"]
    graphs(x)
    assert graphs.cuda_graphs_info()["captures"] == before  # the call replayed
    assert int(graphs.state_dict()["calls"]) == 1


class _SizeFollowsData(torch.nn.Module):
    def forward(self, x):
        idx = torch.nonzero(x > 0)
        y = idx.to(torch.float32)
        for _ in range(5):
            y = torch.sin(y * 1.5 + 0.5)
        return y.sum(0), y.mean()


def test_a_segment_whose_sizes_keep_changing_turns_eager(tmp_path):
    ep = export_or_skip(_SizeFollowsData(), (torch.randn(64),))
    path = save_or_skip(ep, tmp_path / "sizes.pt2")
    eager = pt2interp.load(path)
    prog = _segmented(path, max_cuda_graphs=2)
    for positives in (3, 4, 5, 6, 7, 3):
        x = -torch.ones(64)
        x[:positives] = 1.0
        _close(eager(x), prog(x))
    after = [p for p in prog.cuda_graphs_info()["pieces"] if p["nodes"][0] > 0]
    gave_up = [p for p in after if p["runs"] == "eager" and "sizes changed" in p.get("why", "")]
    assert gave_up, after


class _WritesIntoAView(torch.nn.Module):
    def forward(self, x):
        y = x * 2
        row = y[0]
        n = (y > 0).sum().item()
        row.add_(n)  # must change y too: a copy of ``row`` handed on would take it alone
        return y + 1


def test_a_later_write_into_shared_memory_keeps_that_run_eager(tmp_path):
    ep = export_or_skip(_WritesIntoAView(), (torch.randn(3, 4),))
    if not any("add_" in str(n.target) for n in ep.graph.nodes if n.op == "call_function"):
        pytest.skip("this torch's export removed the in-place add")
    path = save_or_skip(ep, tmp_path / "view_write.pt2")
    eager = pt2interp.load(path)
    prog = _segmented(path)
    x = torch.randn(3, 4)
    _close(eager(x), prog(x))
    first, _item, last = prog.cuda_graphs_info()["pieces"]
    # before the item: a later node writes into a view of what it hands on
    assert first["runs"] == "eager" and "writes in place" in first["why"], first
    # after it: it writes into ``row`` and reads ``y``, one memory, which copies would split
    assert last["runs"] == "eager" and "another value it reads shares" in last["why"], last


def test_a_segment_writing_through_a_view_writes_back(tmp_path):
    class Bumps(torch.nn.Module):
        def forward(self, x):
            head = x[:2]
            head.mul_(3.0)
            n = (x > 0).sum().item()
            return x.sum() + n

    ep = export_or_skip(Bumps(), (torch.randn(4, 3),))
    path = save_or_skip(ep, tmp_path / "bumps.pt2")
    eager = pt2interp.load(path)
    prog = _segmented(path)
    x = torch.randn(4, 3)
    x_eager = x.clone()
    _close(eager(x_eager), prog(x))
    _close(x_eager, x)  # the input the program wrote into holds the same values


def test_cond_branches_replay_as_graphs_of_their_own():
    """A cond on data runs eagerly (its predicate is read on the host) and replays the branch
    it picks; the branches read the parameters in place and copy only ``x`` in."""
    from fixture_cases import case

    c = case("zoo", "cond")
    eager = load_or_skip(c)
    prog = _segmented(c.path)
    (x,), _ = c.inputs()
    calls = [x, -x, x, x, -x]
    for arg in calls:
        _close(eager(arg), prog(arg))
    subgraphs = {s["subgraph"]: s for s in prog.cuda_graphs_info()["subgraphs"]}
    assert set(subgraphs) == {"true_graph_0", "false_graph_0"}
    assert all(s["runs"] == "graphs" and s["captures"] == 1 for s in subgraphs.values())
    assert sum(s["replays"] for s in subgraphs.values()) == len(calls)
    assert {s["replays"] for s in subgraphs.values()} == {2, 3}  # each branch as often as taken
    assert all(s["reads"] == 1 for s in subgraphs.values())  # x; weight and bias in place


def test_a_while_loops_body_replays_every_round():
    from fixture_cases import case

    c = case("zoo", "loops")
    eager = load_or_skip(c)
    prog = _segmented(c.path)
    args, kwargs = c.inputs()
    for _ in range(3):
        _close(eager(*args, **kwargs), prog(*args, **kwargs))
    body = next(
        s for s in prog.cuda_graphs_info()["subgraphs"] if s["subgraph"].endswith("body_graph_0")
    )
    assert body["runs"] == "graphs" and body["captures"] == 1
    assert body["replays"] % 3 == 0 and body["replays"] >= 3, body  # every round of each call
    assert body["reads"] == 2  # the carried values; the linear layer's weights in place


def test_plans_with_no_run_worth_a_graph_stay_eager():
    c = next(c for c in _BLOCKED if c.id == "zoo/data_dependent.pt2")
    plan = plan_capture(read_program(c.path).model)
    assert plan.verdict == "eager" and plan.captured == ()  # its runs are 5 launches or fewer
    assert plan_capture(read_program(c.path).model, min_segment_nodes=5).verdict == "segments"
    with pytest.raises(ValueError, match="min_segment_nodes"):
        plan_capture(read_program(c.path).model, min_segment_nodes=0)


def test_info_names_the_captured_segments(gated, capsys):
    from pt2interp.cli import main

    assert main(["info", str(gated)]) == 0
    out = capsys.readouterr().out
    assert "CUDA graphs: runs 1 part(s) as graphs of their own (nodes 0-" in out
    assert "reads a tensor's value on the host" in out


def _cut_plan(prog, cuts) -> CapturePlan:
    """A plan whose blockers are the program's own and the nodes ``cuts``, every run between
    them captured."""
    blocked = set(cuts)
    plan = plan_capture(prog.program.model, min_segment_nodes=1)
    covered = {i for a, b in plan.segments for i in range(a, b)}
    n = len(prog.program.graph.nodes)
    blocked |= set(range(n)) - covered  # the program's own blockers
    bounds = [-1, *sorted(blocked), n]
    parts = tuple((a + 1, b) for a, b in zip(bounds, bounds[1:]) if a + 1 < b)
    return CapturePlan("segments", plan.blockers, parts, parts, 1, plan.captured_subgraphs)


@pytest.mark.parametrize("c", all_cases(), ids=lambda c: c.id)
def test_any_cut_of_any_fixture_runs_as_eagerly(c):
    """Two nodes picked at random (seeded by the fixture's name) treated as blockers besides
    the program's own, every run between them captured: two calls equal two eager calls. What
    crosses the boundaries (values handed on, slots freed, buffers advanced, in-place writes,
    functorch levels) is carried right, or the run is refused a graph with a reason."""
    import random

    eager = load_or_skip(c)
    n = len(eager.program.graph.nodes)
    if n < 3:
        pytest.skip("too few nodes to cut")
    plan = _cut_plan(eager, random.Random(c.id).sample(range(n), 2))
    prog = _segmented(c.path, plan)
    args, kwargs = c.inputs()
    for _ in range(2):
        _close(eager(*args, **kwargs), prog(*args, **kwargs))
    _close(eager.state_dict(), prog.state_dict())
    for piece in prog.cuda_graphs_info()["pieces"]:
        assert (
            piece["runs"] == "graphs"
            or "why" in piece
            or tuple(piece["nodes"]) not in plan.captured
        )


# ---- on a GPU -------------------------------------------------------------------------------


@requires_cuda
def test_segments_on_cuda_equal_eager(gated):
    eager = pt2interp.load(gated, device="cuda")
    prog = pt2interp.load(gated, device="cuda", cuda_graphs=True)
    assert prog.cuda_graphs_info()["verdict"] == "segments"
    for _ in range(4):
        x = torch.randn(3, 16, device="cuda")
        _close(eager(x), prog(x), tol=1e-4)
    info = prog.cuda_graphs_info()
    assert info["captures"] == 1 and info["replays"] == 4
    assert torch.equal(prog.state_dict()["calls"].cpu(), eager.state_dict()["calls"].cpu())


@requires_cuda
@pytest.mark.parametrize("c", _BLOCKED, ids=lambda c: c.id)
def test_every_blocked_fixture_in_segments_on_cuda(c):
    eager = load_or_skip(c, device="cuda")
    prog = pt2interp.load(c.path, device="cuda", cuda_graphs=True)
    prog.capture_plan = plan_capture(prog.program.model, min_segment_nodes=1)
    prog._start_graphs()

    def on_cuda(v):
        if isinstance(v, torch.Tensor):
            return v.cuda()
        if isinstance(v, (list, tuple)):
            return type(v)(on_cuda(x) for x in v)
        if isinstance(v, dict):
            return {k: on_cuda(x) for k, x in v.items()}
        return v

    for args, kwargs in (c.inputs(), _other_inputs(c)):
        args, kwargs = on_cuda(args), on_cuda(kwargs)
        _close(eager(*args, **kwargs), prog(*args, **kwargs), tol=1e-4)


def test_the_segments_benchmark_runs_on_the_cpu(tmp_path, capsys):
    """``python -m benchmarks.cuda_segments --device cpu --smoke``: its code paths, with the
    stand-in recorder (the figures mean nothing off a GPU)."""
    from benchmarks.cuda_segments import main

    assert (
        main(
            [
                "--device",
                "cpu",
                "--smoke",
                "--cache",
                str(tmp_path),
                "--json",
                str(tmp_path / "rows.json"),
            ]
        )
        == 0
    )
    import json

    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    names = ["chain-1", "chain-2", "chain-4", "resnet18-nonzero", "while-loop"]
    if release(torch.__version__) < (2, 11):
        names = names[: len(rows)]  # an older torch may not export the while_loop
    assert [r["case"] for r in rows] == names
    assert all(r["verdict"] == "segments" and r["outputs equal"] for r in rows)
    assert rows[3]["parts as graphs"] == 1  # the backbone
    assert rows[4:] == [] or rows[4]["parts as graphs"] == 1  # the loop's body
    assert "| resnet18-nonzero | segments | 1 |" in capsys.readouterr().out


class _FailingRecorder:
    """A recorder whose capture fails as CUDA's does on an op it cannot hold."""

    def capture(self, fn, static_inputs):
        fn(static_inputs)  # a warm-up run, which may write state
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_runs_that_segment_eagerly(gated):
    eager = pt2interp.load(gated)
    prog = pt2interp.load(gated)
    prog._start_graphs(_FailingRecorder())
    for _ in range(2):
        x = torch.randn(3, 16)
        _close(eager(x), prog(x))
    assert torch.equal(prog.state_dict()["calls"], eager.state_dict()["calls"])
    body = prog.cuda_graphs_info()["pieces"][0]
    assert body["runs"] == "eager" and "capturing it failed (RuntimeError: operation" in body["why"]


def test_a_failed_whole_capture_runs_eagerly_with_a_warning():
    from fixture_cases import case

    c = case("zoo", "counter")
    eager = load_or_skip(c)
    prog = pt2interp.load(c.path)
    prog._start_graphs(_FailingRecorder())
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="capturing a CUDA graph failed .RuntimeError"):
        _close(eager(x), prog(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(eager(x), prog(x))  # eagerly from now on, without another warning
    assert torch.equal(prog.state_dict()["steps"], eager.state_dict()["steps"])
    assert prog.cuda_graphs_info()["failed"].startswith("RuntimeError: operation not permitted")


def test_a_server_captures_the_segments_at_start_up(gated, monkeypatch):
    from pt2interp.loaded import LoadedProgram
    from pt2interp.serve import Server

    monkeypatch.setattr(LoadedProgram, "_cuda_recorder", lambda self: EagerReplay())
    eager = pt2interp.load(gated)
    server = Server(gated, name="segments", cuda_graphs=True)
    try:
        info = server.info()["cuda_graphs"]
        assert info["verdict"] == "segments" and info["captures"] == 1  # before any request
        assert int(server._program.state_dict()["calls"]) == 0  # the capture's run undone
        for _ in range(3):
            x = torch.randn(3, 16)
            _close(eager(x), server.predict(x))
        info = server.info()["cuda_graphs"]
        assert info["captures"] == 1 and info["replays"] == 3
    finally:
        server.shutdown(drain=False, timeout=2.0)
