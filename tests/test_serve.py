"""The in-process server: output structure, registry, stats and events, faults (bad requests,
model errors, worker death with restart and reload), shutdown, and dynamic batching checked
against direct calls of the same program.

Every test is bounded: threads are daemons, waits have timeouts, and each server is shut down
by the ``serve`` fixture even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid

import pytest
import torch
from fixture_cases import case
from hypothesis import given, settings
from hypothesis import strategies as st

import pt2interp
from pt2interp.errors import InputMismatchError
from pt2interp.serve import (
    ModelUnavailableError,
    RequestCancelledError,
    RequestTimeoutError,
    ServeError,
    Server,
    ServerClosedError,
    WorkerCrashedError,
    get_server,
    list_servers,
)
from pt2interp.serve.batching import BatchLayout, PreparedRequest, chunk_request, plan_runs

pytestmark = pytest.mark.usefixtures("handoff")  # each test under both hand-offs

MLP = case("zoo", "mlp").path  # static 4x16 -> 4x8
DYN_MLP = case("zoo", "dynamic_batch_mlp").path  # batch dim 1..1024
MULTI_IO = case("zoo", "multi_io").path  # dict + tuple outputs, a shared keyword input
COUNTER = case("zoo", "counter").path  # writes a buffer: never batched
MINI_GPT = case("zoo", "mini_gpt").path  # int64 token ids (an embedding)

WAIT = 10.0  # upper bound for anything a test waits on


class Fatal(BaseException):
    """Not an Exception: escapes the per-request handling and kills the worker."""


def _wait_until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _close(a, b) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _block_worker(server: Server):
    """Make the worker's next model run wait for the returned event (then run normally)."""
    release = threading.Event()
    entered = threading.Event()
    original = server.program.run_leaves

    def blocked_run(*args, **kwargs):
        entered.set()
        assert release.wait(WAIT), "test never released the worker"
        server.program.run_leaves = original  # instance attribute: later runs are normal
        return original(*args, **kwargs)

    server.program.run_leaves = blocked_run
    return entered, release


# -- calling and structure -----------------------------------------------------------------------
def test_outputs_keep_the_models_structure(serve):
    server = serve(MULTI_IO)
    (a, b, mask), kw = case("zoo", "multi_io").inputs()
    got = server.predict(a, b, mask, **kw)
    want = pt2interp.load(MULTI_IO)(a, b, mask, **kw)
    assert set(got) == {"sum", "pair", "cat"} and isinstance(got["pair"], tuple)
    assert torch.equal(got["sum"], want["sum"]) and torch.equal(got["cat"], want["cat"])
    assert torch.equal(got["pair"][1], want["pair"][1]) and got["pair"][1].dtype == torch.int64
    # positional inputs by name, as the exported module allows
    again = server.predict(a=a, b=b, mask=mask, **kw)
    assert torch.equal(again["cat"], want["cat"])


def test_predict_from_many_threads_and_the_registry(serve):
    server = serve(DYN_MLP, name="registry-mlp")
    direct = pt2interp.load(DYN_MLP)
    results: dict[int, torch.Tensor] = {}

    def call(i):
        results[i] = get_server("registry-mlp").predict(torch.full((1, 16), float(i)))

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(results) == list(range(8))
    for i, y in results.items():
        assert torch.equal(y, direct(torch.full((1, 16), float(i))))
    assert list_servers()["registry-mlp"] is server
    with pytest.raises(ValueError, match="already running"):
        Server(DYN_MLP, name="registry-mlp")
    server.shutdown()
    with pytest.raises(LookupError, match="no server named 'registry-mlp'"):
        get_server("registry-mlp")


# -- stats and events ---------------------------------------------------------------------------
def test_events_and_info_tell_the_same_story(serve):
    server = serve(DYN_MLP)
    events = []
    unsubscribe = server.on_event(events.append)
    for n in (1, 2, 3):
        server.predict(torch.randn(n, 16))
    with pytest.raises(InputMismatchError):
        server.predict(torch.randn(2, 15))
    info = server.info()
    kinds = [e.kind for e in events]
    assert kinds.count("start") == 4 and kinds.count("stop") == 3 and kinds.count("exception") == 1
    stops = [e for e in events if e.kind == "stop"]
    assert [e.input_count for e in stops] == [1, 2, 3] and all(e.duration_s > 0 for e in stops)
    assert [e.batch_size for e in stops] == [1, 2, 3]
    failed = next(e for e in events if e.kind == "exception")
    assert isinstance(failed.error, InputMismatchError)
    assert info["inference_count"] == 3 and info["request_count"] == 4
    # a request the caller got wrong is rejected, not an inference error
    assert info["rejected_count"] == 1 and info["error_count"] == 0
    assert info["errors_by_kind"] == {
        "input": 1,
        "model": 0,
        "crash": 0,
        "timeout": 0,
        "cancelled": 0,
        "unavailable": 0,
    }
    assert info["last_error_kind"] == "input" and "InputMismatchError" in info["last_error"]
    assert info["batch_count"] == kinds.count("batch") == 3 and info["mean_batch_size"] == 2.0
    assert info["batch_size_distribution"] == {"1": 1, "2": 1, "3": 1}
    lat = info["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert max(e.duration_s for e in stops) * 1000 == pytest.approx(lat["p99"], abs=1e-3)
    assert info["uptime_s"] > 0 and info["path"] == str(DYN_MLP) and info["device"] == "cpu"
    assert info["name"] == server.name and info["restarts"] == 0
    unsubscribe()
    server.predict(torch.randn(1, 16))
    assert len(events) == len(kinds)


def test_a_failing_subscriber_does_not_fail_requests(serve):
    server = serve(MLP)

    def broken(event):
        raise RuntimeError("subscriber bug")

    server.on_event(broken)
    assert server.predict(torch.randn(4, 16)).shape == (4, 8)


# -- faults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 8])
def test_bad_requests_fail_alone_and_the_worker_goes_on(serve, batch_size):
    server = serve(MLP, batch_size=batch_size)
    direct = pt2interp.load(MLP)
    good = torch.randn(4, 16)
    bad = {
        "wrong shape": (torch.randn(4, 15),),
        "wrong rank": (torch.randn(4, 16, 1),),
        "wrong dtype": (torch.randn(4, 16, dtype=torch.float64),),
        "wrong device": (torch.randn(4, 16, device="meta"),),
        "two inputs": (good, good),
        "not a tensor": ([1.0] * 16,),
    }
    for label, args in bad.items():
        with pytest.raises(InputMismatchError) as err:
            server.predict(*args)
        assert "input" in str(err.value), label
        assert _close(server.predict(good), direct(good))
    with pytest.raises(InputMismatchError, match="device meta"):
        server.predict(torch.randn(4, 16, device="meta"))
    info = server.info()
    assert info["rejected_count"] == len(bad) + 1 and info["inference_count"] == len(bad)
    assert info["error_count"] == 0
    assert info["restarts"] == 0


def test_a_model_error_fails_only_its_request(serve):
    server = serve(MINI_GPT)
    tokens = torch.randint(0, 100, (2, 12))
    with pytest.raises(Exception, match="index out of range"):
        server.predict(torch.full((2, 12), 10_000, dtype=torch.int64))  # ids beyond the embedding
    assert server.predict(tokens).shape == (2, 12, 100)
    assert server.info()["error_count"] == 1 and server.info()["restarts"] == 0


def test_worker_death_restarts_the_worker_and_reloads_from_disk(serve, tmp_path):
    path = tmp_path / "model.pt2"
    shutil.copy(MLP, path)  # static batch of 4
    server = serve(path)
    events = []
    server.on_event(events.append)
    first_program = server.program
    entered, release = threading.Event(), threading.Event()

    def dies(*args, **kwargs):
        entered.set()
        release.wait(WAIT)
        raise Fatal("segfault-like death")

    first_program.run_leaves = dies
    doomed = server.submit(torch.randn(4, 16))
    assert entered.wait(WAIT)
    queued = [server.submit(torch.randn(4, 16)) for _ in range(3)]  # wait behind the crash
    shutil.copy(DYN_MLP, path)  # the reload must read the file again
    release.set()
    with pytest.raises(WorkerCrashedError, match="died while running this request"):
        doomed.result(WAIT)
    for f in queued:
        assert f.result(WAIT).shape == (4, 8)
    _wait_until(lambda: server.info()["reloads"] == 1, "the reload")
    info = server.info()
    assert info["restarts"] == 1 and info["ready"] and info["error_count"] == 1
    assert server.program is not first_program
    assert server.layout.batch_symbol is not None  # the new file's dynamic batch
    assert server.predict(torch.randn(7, 16)).shape == (7, 8)
    restart = [e for e in events if e.kind == "restart"]
    assert len(restart) == 1 and isinstance(restart[0].error, Fatal)


def test_a_failed_reload_fails_queued_requests_and_recovers(serve, tmp_path):
    path = tmp_path / "model.pt2"
    shutil.copy(MLP, path)
    server = serve(path)
    entered, release = threading.Event(), threading.Event()

    def dies(*args, **kwargs):
        entered.set()
        release.wait(WAIT)
        raise Fatal("gone")

    server.program.run_leaves = dies
    doomed = server.submit(torch.randn(4, 16))
    assert entered.wait(WAIT)
    path.unlink()  # nothing to reload from
    release.set()
    with pytest.raises(WorkerCrashedError):
        doomed.result(WAIT)
    _wait_until(
        lambda: not server.ready and server.info()["last_error"] is not None, "a failed reload"
    )
    waiting = server.submit(torch.randn(4, 16))
    with pytest.raises(ModelUnavailableError, match="could not be reloaded"):
        waiting.result(WAIT)
    shutil.copy(MLP, path)
    _wait_until(lambda: server.ready, "the reload once the file is back")
    assert server.predict(torch.randn(4, 16)).shape == (4, 8)
    assert server.info()["reloads"] == 1


def test_predict_times_out_instead_of_waiting_forever(serve):
    server = serve(MLP, request_timeout_s=0.2)
    entered, release = _block_worker(server)
    stuck = server.submit(torch.randn(4, 16))
    assert entered.wait(WAIT)
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="no answer within 0.2 s"):
        server.predict(torch.randn(4, 16))
    assert time.monotonic() - started < 2.0
    release.set()
    assert stuck.result(WAIT).shape == (4, 8)
    assert server.info()["timeout_count"] == 1 and server.info()["error_count"] == 0


# -- shutdown --------------------------------------------------------------------------------------
def test_shutdown_drains_what_is_queued(serve):
    server = serve(DYN_MLP, batch_size=4)
    entered, release = _block_worker(server)
    futures = [server.submit(torch.randn(1, 16)) for _ in range(12)]
    assert entered.wait(WAIT)
    closer = threading.Thread(
        target=server.shutdown, kwargs={"drain": True, "timeout": WAIT}, daemon=True
    )
    closer.start()
    _wait_until(lambda: not server.ready, "shutdown to begin")
    with pytest.raises(ServerClosedError, match="shut down"):
        server.predict(torch.randn(1, 16))
    release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert all(f.result(0).shape == (1, 8) for f in futures)


def test_shutdown_without_draining_fails_everyone_promptly(serve):
    server = serve(MLP)
    entered, release = _block_worker(server)
    running = server.submit(torch.randn(4, 16))
    assert entered.wait(WAIT)
    queued = [server.submit(torch.randn(4, 16)) for _ in range(5)]
    started = time.monotonic()
    server.shutdown(drain=False, timeout=0.3)
    assert time.monotonic() - started < 2.0
    for f in queued:
        with pytest.raises(ServerClosedError, match="shut down before this request ran"):
            f.result(0)
    with pytest.raises(ServerClosedError, match="while this request was running"):
        running.result(0)
    release.set()
    assert server.info()["errors_by_kind"]["unavailable"] == 6 and server.info()["error_count"] == 0


# -- batching --------------------------------------------------------------------------------------
def _reference(direct, x: torch.Tensor, static_rows: int | None) -> torch.Tensor:
    """What the program gives for ``x`` run alone: in static chunks padded with the last row."""
    if static_rows is None:
        return direct(x)
    outs = []
    for start in range(0, x.shape[0], static_rows):
        part = x[start : start + static_rows]
        pad = static_rows - part.shape[0]
        if pad:
            part = torch.cat([part, part[-1:].expand(pad, *part.shape[1:])])
        outs.append(direct(part)[: static_rows - pad])
    return torch.cat(outs)


@pytest.mark.parametrize(
    "path, static_rows", [(DYN_MLP, None), (MLP, 4)], ids=["dynamic", "static-padded"]
)
def test_concurrent_requests_are_batched_and_answered_correctly(serve, path, static_rows):
    server = serve(path, batch_size=16, batch_timeout_ms=20)
    direct = pt2interp.load(path)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1 + i % 3, 16, generator=gen) + i for i in range(96)]  # distinct data
    results: dict[int, torch.Tensor] = {}

    def client(k):
        for i in range(k, len(inputs), 24):
            results[i] = server.predict(inputs[i])

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(results) == list(range(len(inputs)))
    for i, x in enumerate(inputs):
        assert results[i].shape == (x.shape[0], 8)
        assert _close(results[i], _reference(direct, x, static_rows)), (
            f"request {i} got someone else's rows"
        )
    info = server.info()
    assert info["inference_count"] == 96 and info["error_count"] == 0
    assert info["batch_count"] < 96 and info["mean_batch_size"] > 2
    assert sum(int(k) * v for k, v in info["batch_size_distribution"].items()) == sum(
        x.shape[0] for x in inputs
    )
    if static_rows:
        assert (
            info["padded_rows"] > 0
            and max(map(int, info["batch_size_distribution"])) <= static_rows
        )


@pytest.mark.parametrize("path, rows_per_run", [(DYN_MLP, 21), (MLP, 4)], ids=["dynamic", "static"])
def test_a_request_larger_than_the_batch_runs_as_the_model_allows(serve, path, rows_per_run):
    """21 rows with batch_size=8: whole where the program takes 21 rows (as without batching),
    in runs of 4 where its batch is a static 4."""
    server = serve(path, batch_size=8)
    runs = []
    server.on_event(lambda e: runs.append(e.batch_size) if e.kind == "batch" else None)
    x = torch.randn(21, 16)
    y = server.predict(x)
    assert y.shape == (21, 8)
    assert _close(y, _reference(pt2interp.load(path), x, 4 if rows_per_run == 4 else None))
    assert max(runs) == rows_per_run and sum(runs) == 21 and len(runs) == -(-21 // rows_per_run)


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory):
    """A program with a dynamic batch and a dynamic sequence length: (B, T, 8) -> (B, 4)."""

    class MeanPool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.proj(x).mean(dim=1)

    torch.manual_seed(0)
    batch, seq = torch.export.Dim("batch", min=1, max=256), torch.export.Dim("seq", min=1, max=64)
    ep = torch.export.export(
        MeanPool().eval(), (torch.randn(2, 5, 8),), dynamic_shapes={"x": {0: batch, 1: seq}}
    )
    path = tmp_path_factory.mktemp("seq") / "mean_pool.pt2"
    torch.export.save(ep, str(path))
    return path


def test_requests_with_different_non_batch_shapes_go_to_separate_runs(serve, seq_model):
    server = serve(seq_model, batch_size=16)
    assert server.layout.batch_symbol is not None and [
        s.batch_axis for s in server.layout.inputs
    ] == [0]
    runs = []
    server.on_event(
        lambda e: runs.append((e.batch_size, e.requests)) if e.kind == "batch" else None
    )
    entered, release = _block_worker(server)
    blocker = server.submit(torch.randn(1, 2, 8))
    assert entered.wait(WAIT)
    xs = [torch.randn(1, 3 if i % 2 else 5, 8) + i for i in range(8)]
    futures = [server.submit(x) for x in xs]  # all queued while the worker is busy
    release.set()
    blocker.result(WAIT)
    direct = pt2interp.load(seq_model)
    for x, f in zip(xs, futures):
        assert _close(f.result(WAIT), direct(x))
    assert runs[1:] == [(4, 4), (4, 4)]  # one run per sequence length


def test_requests_with_different_shared_inputs_go_to_separate_runs(serve):
    server = serve(MULTI_IO, batch_size=5)  # static batch of 5: padded
    runs = []
    server.on_event(lambda e: runs.append(e.requests) if e.kind == "batch" else None)
    direct = pt2interp.load(MULTI_IO)
    entered, release = _block_worker(server)
    gen = torch.Generator().manual_seed(3)

    def request(scale):
        a, b = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        return (a, b, torch.rand(2, 4, generator=gen) > 0.5), {"scale": scale}

    blocker = server.submit(*request(torch.ones(4))[0], scale=torch.ones(4))
    assert entered.wait(WAIT)
    scales = [torch.ones(4), torch.full((4,), 2.0)]
    calls = [request(scales[i % 2].clone()) for i in range(4)]
    futures = [server.submit(*args, **kw) for args, kw in calls]
    release.set()
    blocker.result(WAIT)
    for (args, kw), f in zip(calls, futures):
        got = f.result(WAIT)
        padded = [torch.cat([t, t[-1:].expand(3, *t.shape[1:])]) for t in args]
        want = direct(*padded, **kw)
        assert _close(got["cat"], want["cat"][:2]) and torch.equal(
            got["pair"][1], want["pair"][1][:2]
        )
    assert runs[1:] == [2, 2]  # equal scales share a run


def test_a_bad_request_never_spoils_a_batch(serve):
    server = serve(DYN_MLP, batch_size=16, batch_timeout_ms=5)
    entered, release = _block_worker(server)
    blocker = server.submit(torch.randn(1, 16))
    assert entered.wait(WAIT)
    good = [server.submit(torch.randn(2, 16)) for _ in range(4)]
    bad = server.submit(torch.randn(2, 17))  # refused before it reaches the worker
    release.set()
    blocker.result(WAIT)
    assert all(f.result(WAIT).shape == (2, 8) for f in good)
    with pytest.raises(InputMismatchError, match="dim 1: expected 16, got 17"):
        bad.result(WAIT)


def test_programs_that_must_not_batch_run_one_request_at_a_time(serve):
    server = serve(COUNTER, batch_size=8, batch_timeout_ms=5)
    info = server.info()
    assert not info["batching"] and "writes" in info["batching_note"]
    x = torch.ones(2, 4)
    assert [server.predict(x)[0, 0].item() for _ in range(3)] == [
        1.0,
        2.0,
        3.0,
    ]  # one step per request


def test_plan_runs_groups_by_key_and_packs_rows():
    def chunks(owner, rows, key, cap):
        return chunk_request(owner, PreparedRequest([], rows, key), cap)

    cap = 4
    pieces = (
        chunks("a", 3, "f32[16]", cap)
        + chunks("b", 1, "f64[16]", cap)
        + chunks("c", 6, "f32[16]", cap)
    )
    runs = [[(c.owner, c.start, c.stop) for c in run] for run in plan_runs(pieces, cap)]
    assert runs == [[("a", 0, 3)], [("b", 0, 1)], [("c", 0, 4)], [("c", 4, 6)]]
    assert all(sum(stop - start for _, start, stop in run) <= cap for run in runs)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_every_caller_gets_exactly_one_answer_through_timeouts_and_shutdown(serve, batch_size):
    """Callers that time out, a shutdown that drops the queue mid-stream: each predict returns
    its own right answer or raises a serving error, none hangs, and every request is counted
    exactly once (one ``start``, then one ``stop`` or ``exception``)."""
    server = serve(DYN_MLP, batch_size=batch_size, batch_timeout_ms=1, request_timeout_s=0.02)
    direct = pt2interp.load(DYN_MLP)
    attempts, outcomes, lock = [0], {"ok": 0, "error": 0}, threading.Lock()
    wrong: list[str] = []

    def caller(k: int) -> None:
        for i in range(60):
            x = torch.full((1, 16), float(k * 100 + i))
            with lock:
                attempts[0] += 1
            try:
                y = server.predict(x)
            except ServeError:
                with lock:
                    outcomes["error"] += 1
                continue
            if not _close(y, direct(x)):  # a run of 8 rows may round differently from 1 row
                wrong.append(f"caller {k} request {i}")
            with lock:
                outcomes["ok"] += 1

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(24)]
    for t in threads:
        t.start()
    _wait_until(lambda: attempts[0] >= 400, "the callers to get going")
    server.shutdown(drain=False, timeout=1.0)
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a caller never got an answer"
    assert not wrong, wrong[:5]
    info = server.info()
    assert outcomes["ok"] + outcomes["error"] == attempts[0] == info["request_count"]
    _wait_until(
        lambda: (
            server.info()["inference_count"] + sum(server.info()["errors_by_kind"].values())
            == attempts[0]
        ),
        "every request to be accounted for",
    )
    assert server.info()["inference_count"] >= outcomes["ok"]


# -- waking callers in turn ------------------------------------------------------------------------
class _PerCallerTimeout(Server):
    """A server whose ``request_timeout_s`` a calling thread may set for itself."""

    _callers = threading.local()

    @property
    def request_timeout_s(self) -> float:
        return getattr(self._callers, "timeout", self._default_timeout)

    @request_timeout_s.setter
    def request_timeout_s(self, value: float) -> None:
        self._default_timeout = value


def test_callers_who_gave_up_do_not_stall_the_callers_after_them():
    """The callers of one run wake one another in turn. Every other caller of this run gives up
    (times out) while the run is held up, so the turn must pass through them: the patient
    callers behind them get their own answers as soon as the run ends."""
    server = _PerCallerTimeout(
        DYN_MLP,
        name=f"t-{uuid.uuid4().hex[:8]}",
        batch_size=8,
        batch_timeout_ms=5000,
        request_timeout_s=WAIT,
    )
    direct = pt2interp.load(DYN_MLP)
    outcomes: dict[int, object] = {}
    try:
        entered, release = _block_worker(server)

        def caller(k: int) -> None:
            if k % 2:
                server._callers.timeout = 0.3
            x = torch.full((1, 16), float(k))
            try:
                outcomes[k] = _close(server.predict(x), direct(x))
            except RequestTimeoutError:
                outcomes[k] = "timed out"

        threads = []
        for k in range(8):  # queued in this order: patient, impatient, patient, ...
            threads.append(threading.Thread(target=caller, args=(k,), daemon=True))
            threads[-1].start()
            _wait_until(
                lambda n=k + 1: server.info()["request_count"] == n, f"caller {k} to submit"
            )
        assert entered.wait(WAIT)  # all eight in one run, held up
        for t in threads[1::2]:
            t.join(WAIT)
        assert [outcomes.get(k) for k in range(1, 8, 2)] == ["timed out"] * 4
        release.set()
        started = time.monotonic()
        for t in threads[0::2]:
            t.join(WAIT)
        assert time.monotonic() - started < 2.0, "a patient caller waited for a caller who had left"
        assert [outcomes.get(k) for k in range(0, 8, 2)] == [True] * 4
        assert server.info()["batch_size_distribution"] == {"8": 1}
    finally:
        server.shutdown(drain=False, timeout=2.0)


@pytest.mark.parametrize("first_rows", [1, 10])
def test_a_full_run_starts_without_waiting_out_the_timeout(serve, first_rows):
    """Requests of several rows count by their rows: 16 rows queued in a mix of one 10-row
    request and one-row ones wake the worker at once, long before ``batch_timeout_ms``."""
    server = serve(DYN_MLP, batch_size=16, batch_timeout_ms=5000)
    sizes = [first_rows, 11 - first_rows] + [1] * 5
    assert sum(sizes) == 16
    started = time.monotonic()
    futures = [server.submit(torch.randn(n, 16)) for n in sizes]
    assert [tuple(f.result(WAIT).shape) for f in futures] == [(n, 8) for n in sizes]
    assert time.monotonic() - started < 2.5, "the worker waited for the batch timeout"
    assert server.info()["batch_size_distribution"] == {"16": 1}


_PLAIN_LAYOUTS = {
    path: BatchLayout.from_program(pt2interp.read_program(path).model) for path in (DYN_MLP, MLP)
}


def test_the_plain_call_shortcut_takes_the_plain_call():
    x = torch.zeros(3, 16)
    assert _PLAIN_LAYOUTS[DYN_MLP].prepare_plain((x,), {}, torch.device("cpu")).leaves[0] is x


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from([DYN_MLP, MLP]),
    shape=st.one_of(
        st.tuples(st.integers(0, 6), st.sampled_from([16, 8])).map(list),
        st.lists(st.integers(0, 20), min_size=0, max_size=3),
    ),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64]),
    as_keyword=st.booleans(),
)
def test_the_plain_call_shortcut_agrees_with_prepare(path, shape, dtype, as_keyword):
    """``prepare_plain`` either declines (None) or gives exactly what ``prepare`` gives, and it
    declines everything ``prepare`` refuses."""
    layout = _PLAIN_LAYOUTS[path]
    x = torch.zeros(shape, dtype=dtype)
    args, kwargs = ((), {"x": x}) if as_keyword else ((x,), {})
    cpu = torch.device("cpu")
    quick = layout.prepare_plain(args, kwargs, cpu)
    try:
        full = layout.prepare(layout.bind(args, kwargs), cpu)
    except InputMismatchError:
        assert quick is None
        return
    if quick is not None:
        assert quick.rows == full.rows and quick.group_key == full.group_key
        assert len(quick.leaves) == len(full.leaves) == 1 and quick.leaves[0] is full.leaves[0]


# -- giving up on requests -------------------------------------------------------------------------
def _count_runs(server: Server) -> list[int]:
    """Rows of every model run from now on, in order."""
    rows: list[int] = []
    server.on_event(lambda e: rows.append(e.batch_size) if e.kind == "batch" else None)
    return rows


@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_withdrawn_request_never_runs(serve, batch_size):
    server = serve(DYN_MLP, batch_size=batch_size)
    entered, release = _block_worker(server)
    first = server.submit(torch.randn(1, 16))
    assert entered.wait(WAIT)
    runs = _count_runs(server)
    queued = server.submit(torch.randn(3, 16))
    cancelled = server.submit(torch.randn(5, 16))
    assert server.withdraw(queued, RequestTimeoutError("past its deadline"))
    assert cancelled.cancel() and cancelled.cancelled()
    assert not server.withdraw(queued)  # answered already
    with pytest.raises(RequestTimeoutError, match="past its deadline"):
        queued.result(0)
    release.set()
    assert first.result(WAIT).shape == (1, 8)
    assert server.predict(torch.randn(2, 16)).shape == (2, 8)
    assert 3 not in runs and 5 not in runs and 8 not in runs, runs  # neither ever ran
    info = server.info()
    assert info["timeout_count"] == 1 and info["cancelled_count"] == 1 and info["error_count"] == 0
    assert info["inference_count"] == 2


def test_a_split_request_stops_at_its_next_run_once_withdrawn(serve):
    server = serve(DYN_MLP, batch_size=4)
    server._split_rows = 4  # pieces of 4 rows, as for a request over the model's limit
    runs = _count_runs(server)
    original = server.program.run_leaves
    started = threading.Event()

    def slow_run(*args, **kwargs):
        started.set()
        time.sleep(0.02)
        return original(*args, **kwargs)

    server.program.run_leaves = slow_run
    big = server.submit(torch.randn(4 * 200, 16))  # 200 runs of 4 rows
    assert started.wait(WAIT)
    time.sleep(0.1)
    assert not big.cancel() and not big.cancelled()  # running: cancel() stops it instead
    with pytest.raises(RequestCancelledError):
        big.result(WAIT)
    made = len(runs)
    time.sleep(0.2)
    assert len(runs) <= made + 1 and made < 50, (made, len(runs))  # at most the run under way
    assert server.predict(torch.randn(2, 16)).shape == (2, 8)
    assert server.info()["cancelled_count"] == 1


def test_a_large_request_does_not_hold_up_the_ones_behind_it(serve):
    server = serve(DYN_MLP, batch_size=4)
    server._split_rows = 4  # pieces of 4 rows, as for a request over the model's limit
    original = server.program.run_leaves

    def slow_run(*args, **kwargs):
        time.sleep(0.01)
        return original(*args, **kwargs)

    server.program.run_leaves = slow_run
    x = torch.randn(4 * 100, 16)
    big = server.submit(x)  # 100 runs, over a second
    time.sleep(0.05)
    started = time.monotonic()
    small = server.predict(torch.randn(1, 16))
    waited = time.monotonic() - started
    assert small.shape == (1, 8) and not big.done()
    assert waited < 0.5, f"a 1-row request waited {waited:.2f} s behind a 100-run request"
    assert torch.allclose(big.result(WAIT), pt2interp.load(DYN_MLP)(x), rtol=1e-5, atol=1e-6)


def test_queue_and_compute_time_are_measured_apart(serve):
    server = serve(DYN_MLP, batch_size=4)
    entered, release = _block_worker(server)
    first = server.submit(torch.randn(1, 16))
    assert entered.wait(WAIT)
    second = server.submit(torch.randn(1, 16))
    time.sleep(0.2)  # `second` waits in the queue
    release.set()
    first.result(WAIT), second.result(WAIT)
    info = server.info()
    queue, compute = info["queue_seconds"], info["compute_seconds"]
    assert queue["count"] == compute["count"] == 2
    assert queue["sum"] >= 0.2 and compute["sum"] >= 0.2  # first's run was held 0.2 s or more
    assert {b: n for b, n in queue["buckets"]}[0.1] <= 1  # `second` queued 0.2 s or more


# -- torch threads ---------------------------------------------------------------------------------
def test_threads_follow_the_cpus_other_processes_leave_free():
    from pt2interp.serve.cpus import ThreadChooser

    two = ThreadChooser(cpus=2, interval_s=0.0)
    assert [two.threads_for(b) for b in (0.0, 0.9, 1.0, 2.0)] == [1, 1, 1, 1]
    eight = ThreadChooser(cpus=8, interval_s=0.0)
    assert [eight.threads_for(b) for b in (0.0, 2.0, 6.6, 8.0)] == [7, 5, 1, 1]
    live = ThreadChooser(interval_s=0.0)
    assert live.update() is None  # no interval measured yet
    time.sleep(0.05)
    threads = live.update()
    assert threads is None or 1 <= threads <= live.cpus  # None off Linux


def test_a_server_takes_its_thread_setting(serve):
    fixed = serve(DYN_MLP, threads=1)
    assert fixed.predict(torch.randn(2, 16)).shape == (2, 8) and fixed.info()["threads"] == 1
    auto = serve(DYN_MLP, threads="auto")
    auto.predict(torch.randn(2, 16))
    assert 1 <= auto.info()["threads"] <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="threads must be"):
        serve(DYN_MLP, threads=0)


def test_a_request_larger_than_a_batch_runs_whole_unless_the_model_cannot_take_it(serve):
    server = serve(DYN_MLP, batch_size=16)  # the program takes 1..1024 rows
    runs = _count_runs(server)
    direct = pt2interp.load(DYN_MLP)
    x = torch.randn(32, 16)
    assert _close(server.predict(x), direct(x))
    assert runs == [32]  # one run, as without batching
    y = torch.randn(2500, 16)
    assert _close(
        server.predict(y), torch.cat([direct(y[:1024]), direct(y[1024:2048]), direct(y[2048:])])
    )
    assert runs[1:] == [1024, 1024, 452]
