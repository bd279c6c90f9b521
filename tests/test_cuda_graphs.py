"""CUDA-graph mode. On any machine: the graph cache's behaviour (one graph per signature, least
recently used dropped, static inputs, fresh outputs, buffer and input mutations, capture ahead
of time) through :class:`EagerReplay`, which replays by running the program again. With a GPU
(``pytest -m cuda``): the real capture, against eager runs of the same program.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import requires_cuda
from fixture_cases import case
from helpers import export_or_skip, save_or_skip

import pt2interp
from pt2interp.cuda_graphs import EagerReplay, GraphCache, signature_of
from pt2interp.errors import DeviceError


def _same(prog, want, got, tol=0.0):
    want, got = prog.named_outputs(want), prog.named_outputs(got)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol, msg=name)


def _replaying(path, **options):
    prog = pt2interp.load(path, **options)
    prog._start_graphs(EagerReplay())
    return prog


@pytest.mark.parametrize("name", ["mini_gpt", "tiny_resnet", "multi_io", "small_cnn", "gru"])
def test_replays_equal_eager_runs(name):
    c = case("zoo", name)
    eager = pt2interp.load(c.path)
    graphs = _replaying(c.path)
    args, kwargs = c.inputs()
    for _ in range(3):
        _same(eager, eager(*args, **kwargs), graphs(*args, **kwargs))
    info = graphs.cuda_graphs_info()
    assert (info["verdict"], info["graphs"], info["captures"], info["replays"]) == (
        "whole",
        1,
        1,
        3,
    )


def test_one_graph_per_signature_least_recently_used_dropped():
    c = case("zoo", "dynamic_batch_mlp")
    eager = pt2interp.load(c.path)
    graphs = _replaying(c.path, max_cuda_graphs=2)
    for batch in (1, 2, 1, 3, 2, 1):
        x = torch.randn(batch, 16)
        torch.testing.assert_close(graphs(x), eager(x), rtol=0, atol=0)
    info = graphs.cuda_graphs_info()
    # 1, 2 captured; 1 replayed; 3 captured (2 dropped); 2 captured again (1 dropped); 1 again
    assert (info["captures"], info["evictions"], info["graphs"]) == (5, 3, 2)


def test_outputs_are_never_overwritten_unless_asked():
    c = case("zoo", "dynamic_batch_mlp")
    graphs = _replaying(c.path)
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    out_a = graphs(a)
    kept = out_a.clone()
    out_b = graphs(b)
    assert torch.equal(out_a, kept) and not torch.equal(out_a, out_b)
    reused = _replaying(c.path, reuse_outputs=True)
    first = reused(a)
    second = reused(b)
    assert first is second  # the graph's own output tensor, overwritten by the later call


def test_buffer_mutations_advance_call_by_call():
    c = case("zoo", "counter")
    eager = pt2interp.load(c.path)
    graphs = _replaying(c.path)
    x = torch.randn(2, 4)
    assert graphs.capture(x) is True and graphs.capture(x) is False
    # capturing ahead of time ran the program (warm-up) but left the buffer as it was
    assert torch.equal(graphs.state_dict()["steps"], eager.state_dict()["steps"])
    for _ in range(4):
        torch.testing.assert_close(graphs(x), eager(x), rtol=0, atol=0)
    assert torch.equal(graphs.state_dict()["steps"], eager.state_dict()["steps"])
    assert graphs.cuda_graphs_info()["captures"] == 1


def test_inputs_the_program_writes_are_written_back(tmp_path):
    class AddsInPlace(torch.nn.Module):
        def forward(self, x):
            x.add_(1.0)
            return x * 2

    ep = export_or_skip(AddsInPlace(), (torch.zeros(3),))
    path = save_or_skip(ep, tmp_path / "adds.pt2")
    graphs = _replaying(path)
    x = torch.zeros(3)
    for n in range(1, 4):
        out = graphs(x)
        assert torch.equal(x, torch.full((3,), float(n))), "the input was not written back"
        assert torch.equal(out, 2 * x)


def test_programs_a_graph_cannot_hold_run_eagerly_and_say_why():
    c = case("zoo", "data_dependent")
    with pytest.warns(UserWarning, match="runs eagerly, not as CUDA graphs: graph.nodes"):
        prog = _replaying(c.path)
    args, kwargs = c.inputs()
    want = pt2interp.load(c.path)(*args, **kwargs)
    got = prog(*args, **kwargs)
    _same(prog, want, got)
    info = prog.cuda_graphs_info()
    assert info["verdict"] == "eager" and "graphs" not in info
    assert any("output size depends on the data" in r for r in info["reasons"])
    assert prog.capture(*args, **kwargs) is False


def test_cuda_graphs_need_a_cuda_device():
    import gc

    path = case("zoo", "mlp").path
    gc.collect()  # earlier tests' garbage warns before, not inside, the block below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DeviceError, match="CUDA graphs need the program on a CUDA device"):
            pt2interp.load(path, cuda_graphs=True)
        gc.collect()
    # the refused load closed the archive it opened
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not [w for w in unclosed if path.name in str(w.message)]
    with pytest.raises(ValueError, match="cuda_graphs=True"):
        pt2interp.load(case("zoo", "mlp").path).capture(torch.randn(2, 16))


def test_the_recorder_captures_on_the_programs_device_in_thread_local_mode(monkeypatch):
    """How :class:`CudaRecorder` drives ``torch.cuda`` (here a stand-in that logs each call, as
    CI has no GPU): warm-up on a side stream, then the capture on a stream of the program's
    own device with that device current, into the shared pool, in ``thread_local`` mode (other
    threads may allocate meanwhile). The real capture is tested under ``pytest -m cuda``."""
    import contextlib
    from types import SimpleNamespace

    from pt2interp import cuda_graphs

    log, where = [], {"device": "cuda:0", "stream": None, "graph": None}

    def context(key, value):
        @contextlib.contextmanager
        def entered():
            before, where[key] = where[key], value
            try:
                yield
            finally:
                where[key] = before

        return entered()

    class FakeStream(SimpleNamespace):
        def wait_stream(self, other):
            log.append(("wait", self.name, other.name))

    streams = iter(["capture", "side", "other"])
    fake = SimpleNamespace(
        graph_pool_handle=lambda: "pool",
        Stream=lambda device: FakeStream(name=next(streams), device=str(device)),
        current_stream=lambda device: FakeStream(name="current", device=str(device)),
        stream=lambda s: context("stream", s.name),
        device=lambda d: context("device", str(d)),
        CUDAGraph=lambda: "graph",
        graph=lambda g, pool, stream, capture_error_mode: context(
            "graph", (g, pool, stream.name, stream.device, capture_error_mode)
        ),
    )
    for name, value in vars(fake).items():  # just these: other threads may still ask torch.cuda
        monkeypatch.setattr(torch.cuda, name, value)

    def program(inputs):
        log.append(("run", where["device"], where["stream"], where["graph"]))
        return [inputs[0] + 1]

    recorder = cuda_graphs.CudaRecorder(torch.device("cuda:1"), warmup=2)
    graph, outputs = recorder.capture(program, [torch.zeros(2)])
    assert graph == "graph" and torch.equal(outputs[0], torch.ones(2))
    assert log == [
        ("wait", "side", "current"),
        ("run", "cuda:1", "side", None),
        ("run", "cuda:1", "side", None),
        ("wait", "current", "side"),
        ("run", "cuda:1", None, ("graph", "pool", "capture", "cuda:1", "thread_local")),
    ]


def test_captures_in_different_threads_take_turns(monkeypatch):
    """torch allows one capture underway at a time in a process: two programs (two server
    workers) meeting a new input signature at once capture one after the other."""
    import contextlib
    import threading
    import time
    from types import SimpleNamespace

    from pt2interp import cuda_graphs

    inside, most = [0], [0]

    @contextlib.contextmanager
    def capturing(*_, **__):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for the other thread to arrive meanwhile
        try:
            yield
        finally:
            inside[0] -= 1

    stream = SimpleNamespace(wait_stream=lambda other: None)
    fake = SimpleNamespace(
        graph_pool_handle=lambda: "pool",
        Stream=lambda device: stream,
        current_stream=lambda device: stream,
        stream=lambda s: contextlib.nullcontext(),
        device=lambda d: contextlib.nullcontext(),
        CUDAGraph=lambda: "graph",
        graph=capturing,
    )
    for name, value in vars(fake).items():
        monkeypatch.setattr(torch.cuda, name, value)
    recorders = [cuda_graphs.CudaRecorder(torch.device(f"cuda:{i}"), warmup=0) for i in (0, 1)]
    threads = [
        threading.Thread(target=r.capture, args=(lambda inputs: list(inputs), [torch.ones(1)]))
        for r in recorders
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == [1] and inside == [0]


def test_signatures_tell_shapes_dtypes_strides_and_values_apart():
    x = torch.randn(2, 3)
    same = [signature_of([x, 1]), signature_of([torch.zeros(2, 3), 1])]
    assert same[0] == same[1]
    for other in (
        [torch.randn(3, 3), 1],
        [x.double(), 1],
        [x.t().contiguous().t(), 1],
        [x, 2],
    ):
        assert signature_of(other) != same[0]


def test_the_cache_refuses_no_room():
    with pytest.raises(ValueError, match="max_graphs"):
        GraphCache(lambda leaves: leaves, EagerReplay(), max_graphs=0)


# ---- on a GPU -------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("name", ["mini_gpt", "tiny_resnet", "multi_io", "counter", "encoder"])
def test_cuda_graphs_equal_eager_on_cuda(name):
    c = case("zoo", name)
    eager = pt2interp.load(c.path, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these programs are whole-graph ones
        graphs = pt2interp.load(c.path, device="cuda", cuda_graphs=True)
    args, kwargs = c.inputs()
    for _ in range(4):
        _same(eager, eager(*args, **kwargs), graphs(*args, **kwargs), tol=1e-3)
    info = graphs.cuda_graphs_info()
    assert info["captures"] == 1 and info["replays"] == 4
    if name == "counter":
        assert torch.equal(graphs.state_dict()["steps"], eager.state_dict()["steps"])


@requires_cuda
def test_cuda_graphs_share_one_pool_and_keep_outputs():
    c = case("zoo", "dynamic_batch_mlp")
    prog = pt2interp.load(c.path, device="cuda", cuda_graphs=True)
    for batch in (1, 2, 4, 8):
        prog.capture(torch.randn(batch, 16, device="cuda"))
    assert prog.cuda_graphs_info()["graphs"] == 4
    a = prog(torch.randn(4, 16, device="cuda"))
    kept = a.clone()
    prog(torch.randn(4, 16, device="cuda"))
    assert torch.equal(a, kept)


# ---- serving ----------------------------------------------------------------------------------


def test_server_captures_each_run_size_ahead_and_pads_runs_to_them(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from pt2interp.loaded import LoadedProgram
    from pt2interp.serve import Server

    # the CPU stands in for the GPU: captures "replay" by running again
    monkeypatch.setattr(LoadedProgram, "_cuda_recorder", lambda self: EagerReplay())
    c = case("zoo", "dynamic_batch_mlp")
    eager = pt2interp.load(c.path)
    server = Server(c.path, name="graphs-mlp", batch_size=8, batch_timeout_ms=20, cuda_graphs=True)
    try:
        info = server.info()
        assert info["run_sizes"] == [1, 2, 4, 8]
        assert info["cuda_graphs"]["captures"] == 4  # before any request
        xs = [torch.randn(rows, 16) for rows in (1, 3, 2, 5, 1, 1, 7, 2)]
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(server.predict, xs))
        for x, out in zip(xs, outs):
            torch.testing.assert_close(out, eager(x), rtol=1e-5, atol=1e-5)
        info = server.info()
        assert info["cuda_graphs"]["captures"] == 4, "a request waited for a capture"
        assert info["cuda_graphs"]["replays"] == info["batch_count"]
        # every run padded up to a captured size: the padding is what the real rows left
        padding = sum(
            (next(b for b in (1, 2, 4, 8) if b >= int(rows)) - int(rows)) * runs
            for rows, runs in info["batch_size_distribution"].items()
        )
        assert info["padded_rows"] == padding
    finally:
        server.shutdown(drain=False, timeout=2.0)


def test_server_without_batching_captures_the_example_size(monkeypatch):
    from pt2interp.loaded import LoadedProgram
    from pt2interp.serve import Server

    monkeypatch.setattr(LoadedProgram, "_cuda_recorder", lambda self: EagerReplay())
    c = case("zoo", "tiny_resnet")
    server = Server(c.path, name="graphs-resnet", cuda_graphs=True)
    try:
        assert server.info()["cuda_graphs"]["captures"] == 1
        args, kwargs = c.inputs()
        torch.testing.assert_close(
            server.predict(*args, **kwargs), pt2interp.load(c.path)(*args, **kwargs)
        )
        assert server.info()["cuda_graphs"]["captures"] == 1
    finally:
        server.shutdown(drain=False, timeout=2.0)


def test_runs_that_record_autograd_stay_eager():
    c = case("zoo", "mlp")
    prog = pt2interp.load(c.path, inference_mode=False)
    prog._start_graphs(EagerReplay())
    (x,), _ = c.inputs()
    out = prog(x)  # grad enabled: eager, with an autograd graph to train through
    assert out.requires_grad and prog.cuda_graphs_info()["captures"] == 0
    with torch.no_grad():
        prog(x)
    assert prog.cuda_graphs_info()["captures"] == 1
