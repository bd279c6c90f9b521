"""The server's hand-off (:mod:`pt2interp.serve.handoff`), both implementations: requests put
by many threads reach the one taker exactly once and in each producer's order, the taker waits
for rows (not requests), for a deadline or for ``close``, and answered callers are woken exactly
once, including those who give up at the moment they are woken. Then the wake line's own
promises (the fast kind's): the turn passes exactly once, and a lost turn is taken over.

Every wait is bounded; threads are daemons.
"""

from __future__ import annotations

import collections
import random
import sys
import threading
import time

import pytest
import torch
from fixture_cases import case

import pt2interp
from pt2interp.serve.handoff import (
    DirectWake,
    LockedQueue,
    LockFreeQueue,
    WakeLine,
    handoff_kind,
    make_handoff,
)

DYN_MLP = case("zoo", "dynamic_batch_mlp").path
WAIT = 10.0  # upper bound for anything a test waits on
KINDS = ["plain", "fast"]


class Request:
    """What the hand-off needs of a request (as ``pt2interp.serve.server._Request`` has it)."""

    def __init__(self, rows: int = 1, tag: object = None):
        self.rows = rows
        self.tag = tag
        self.claim = threading.Lock()
        self.done = threading.Lock()
        self.done.acquire()
        self.has_turn = False
        self.abandoned = False

    @property
    def finished(self) -> bool:
        return self.claim.locked()


def _in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        out["value"] = fn(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- choosing -------------------------------------------------------------------------------------
def test_the_kind_follows_the_argument_then_the_environment_then_the_gil(monkeypatch):
    monkeypatch.delenv("PT2INTERP_HANDOFF", raising=False)
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert handoff_kind() == "plain"
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert handoff_kind() == "fast"
    monkeypatch.setenv("PT2INTERP_HANDOFF", "plain")
    assert handoff_kind() == "plain"
    assert handoff_kind("fast") == "fast"
    queue, wakeup = make_handoff()
    assert isinstance(queue, LockedQueue) and isinstance(wakeup, DirectWake)
    queue, wakeup = make_handoff("fast")
    assert isinstance(queue, LockFreeQueue) and isinstance(wakeup, WakeLine)
    monkeypatch.setenv("PT2INTERP_HANDOFF", "lockless")
    with pytest.raises(ValueError, match="PT2INTERP_HANDOFF='lockless': choose 'plain' or 'fast'"):
        make_handoff()


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_takes_the_kind_from_the_environment(serve, monkeypatch, kind):
    monkeypatch.setenv("PT2INTERP_HANDOFF", kind)
    server = serve(DYN_MLP, batch_size=4)
    assert server._queue.kind == server._wakeup.kind == kind
    x = torch.randn(3, 16)
    assert torch.allclose(server.predict(x), pt2interp.load(DYN_MLP)(x), rtol=1e-5, atol=1e-6)


# -- the queue ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_many_producers_one_taker_nothing_lost_or_taken_twice(kind, seed):
    queue, _ = make_handoff(kind)
    rng = random.Random(seed)
    producers, each = 8, 300
    sent = [
        [Request(rows=rng.choice([1, 1, 1, 2, 5]), tag=(p, i)) for i in range(each)]
        for p in range(producers)
    ]
    go = threading.Barrier(producers + 1)

    def produce(mine: list[Request]) -> None:
        go.wait()
        for n, request in enumerate(mine):
            assert queue.put(request)
            if n % 37 == 0:
                time.sleep(0.0005)

    threads = [threading.Thread(target=produce, args=(m,), daemon=True) for m in sent]
    for t in threads:
        t.start()
    go.wait()
    taken: list[Request] = []
    deadline = time.monotonic() + WAIT
    while len(taken) < producers * each and time.monotonic() < deadline:
        rows = rng.choice([1, 4, 16])
        most = rng.choice([None, 1, 8])
        taken += queue.take(rows, deadline=time.monotonic() + rng.choice([0.0, 0.002]), most=most)
    for t in threads:
        t.join(WAIT)
    assert len(taken) == producers * each, "requests were lost"
    assert len({id(r) for r in taken}) == len(taken), "a request was taken twice"
    assert len(queue) == 0 and queue.take(1, deadline=0.0) == []
    by_producer = collections.defaultdict(list)
    for request in taken:
        by_producer[request.tag[0]].append(request.tag[1])
    assert all(order == list(range(each)) for order in by_producer.values())


@pytest.mark.parametrize("kind", KINDS)
def test_take_waits_for_rows_not_requests(kind):
    queue, _ = make_handoff(kind)
    queue.put(Request(rows=2))
    thread, out = _in_thread(queue.take, 3, time.monotonic() + WAIT)
    time.sleep(0.05)
    assert thread.is_alive(), "took 2 rows when 3 were wanted"
    started = time.monotonic()
    queue.put(Request(rows=1))
    thread.join(WAIT)
    assert time.monotonic() - started < 2.0
    assert [r.rows for r in out["value"]] == [2, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_take_with_a_deadline_returns_what_is_there_when_it_passes(kind):
    queue, _ = make_handoff(kind)
    assert queue.take(1, deadline=time.monotonic() + 0.05) == []
    first = Request()
    queue.put(first)
    started = time.monotonic()
    assert queue.take(4, deadline=started + 0.1) == [first]
    assert 0.08 <= time.monotonic() - started < 2.0
    queue.put(second := Request())
    assert queue.take(4, deadline=0.0) == [second]  # a deadline passed: no waiting at all


@pytest.mark.parametrize("kind", KINDS)
def test_take_gives_at_most_most(kind):
    queue, _ = make_handoff(kind)
    requests = [Request() for _ in range(5)]
    for request in requests:
        queue.put(request)
    assert queue.take(1, most=2) == requests[:2]
    assert queue.take_all() == requests[2:]
    assert len(queue) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_close_wakes_the_taker_and_refuses_new_requests(kind):
    queue, _ = make_handoff(kind)
    queued = Request()
    queue.put(queued)
    thread, out = _in_thread(queue.take, 10)  # no deadline: only close ends the wait
    time.sleep(0.05)
    assert thread.is_alive()
    queue.close()
    thread.join(WAIT)
    assert not thread.is_alive(), "close did not wake the taker"
    assert out["value"] == [queued]
    assert queue.closed and not queue.put(Request()) and len(queue) == 0
    assert queue.take(1) == []  # closed and empty: returns at once


# -- waking ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_callers_in_many_threads_are_each_woken_exactly_once(kind, seed):
    """Producers put requests and wait for them; one worker takes rounds and wakes each round's
    callers (some one at a time, as answers outside a round are); a third of the callers give
    up early. Every patient caller is woken once; no request is answered twice."""
    queue, wakeup = make_handoff(kind)
    rng = random.Random(seed)
    callers, each = 16, 40
    woken = collections.Counter()
    gave_up = collections.Counter()
    lock = threading.Lock()

    def caller(k: int) -> None:
        for i in range(each):
            request = Request(tag=(k, i))
            assert queue.put(request)
            patience = 0.0005 if (k + i) % 3 == 0 else WAIT
            if not wakeup.wait(request, patience):
                if not wakeup.abandon(request):
                    with lock:
                        gave_up[request.tag] += 1
                    continue
            wakeup.woken(request)
            with lock:
                woken[request.tag] += 1

    def worker() -> None:
        answered = 0
        while answered < callers * each:
            batch = queue.take(1, deadline=time.monotonic() + 0.01, most=rng.choice([1, 4, 16]))
            for request in batch:
                assert request.claim.acquire(blocking=False), "a request was taken twice"
            if rng.random() < 0.2:
                for request in batch:
                    wakeup.wake(request)
            else:
                wakeup.wake_in_turn(batch)
            answered += len(batch)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    taker = threading.Thread(target=worker, daemon=True)
    for t in [*threads, taker]:
        t.start()
    for t in [*threads, taker]:
        t.join(WAIT * 2)
    assert not any(t.is_alive() for t in [*threads, taker]), "a caller or the worker is stuck"
    assert all(n == 1 for n in woken.values()) and all(n == 1 for n in gave_up.values())
    assert len(woken) + len(gave_up) == callers * each
    assert not set(woken) & set(gave_up)
    patient = [(k, i) for k in range(callers) for i in range(each) if (k + i) % 3]
    assert all(woken[tag] == 1 for tag in patient), "a patient caller was never woken"


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_who_gave_up_does_not_hold_up_those_behind(kind):
    _, wakeup = make_handoff(kind)
    gone, second, third = requests = [Request() for _ in range(3)]
    for request in requests:
        request.claim.acquire()
    assert not wakeup.wait(gone, 0.01) and not wakeup.abandon(gone)
    wakeup.wake_in_turn(requests)
    for request in (second, third):
        assert wakeup.wait(request, WAIT), "a caller behind one who gave up was never woken"
        wakeup.woken(request)
    if kind == "fast":  # the line woke it, saw it gone, took its done back and moved on
        assert gone.done.locked() and len(wakeup) == 0 and wakeup._holder is None


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_that_arrives_as_its_caller_gives_up_is_kept(kind):
    _, wakeup = make_handoff(kind)
    request = Request()
    request.claim.acquire()
    assert not wakeup.wait(request, 0.01)
    wakeup.wake_in_turn([request])
    assert wakeup.abandon(request), "woken before giving up: the answer is the caller's"
    wakeup.woken(request)


# -- the wake line (fast) -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
def test_the_turn_passes_exactly_once_when_a_caller_gives_up_as_it_is_woken(seed):
    """The wake line against callers giving up at the same moment (the race ``abandoned`` and
    the non-blocking acquire settle) and against the worker lining up more callers while the
    turn is being passed: every caller who waits to the end is woken exactly once, and the turn
    comes back free with nobody left in line."""
    rng = random.Random(seed)
    line = WakeLine()
    requests = [Request() for _ in range(24)]
    gives_up = {i for i in range(len(requests)) if rng.random() < 0.4}
    woken = collections.Counter()
    go = threading.Barrier(len(requests) + 1)

    def waiter(i: int, request) -> None:
        go.wait()
        if i in gives_up:
            time.sleep(rng.random() * 0.002)
            if not line.abandon(request):
                return
        else:
            assert request.done.acquire(timeout=WAIT), f"caller {i} was never woken"
        woken[i] += 1
        line.woken(request)

    threads = [
        threading.Thread(target=waiter, args=(i, r), daemon=True) for i, r in enumerate(requests)
    ]
    for t in threads:
        t.start()
    go.wait()
    cut = rng.randrange(1, len(requests))  # two rounds of the worker
    time.sleep(rng.random() * 0.002)
    line.wake_in_turn(requests[:cut])
    time.sleep(rng.random() * 0.001)
    line.wake_in_turn(requests[cut:])
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert all(woken[i] == 1 for i in range(len(requests)) if i not in gives_up)
    assert all(woken[i] <= 1 for i in gives_up)
    # every done lock has been taken by its caller or passed through; the turn is free again
    assert all(r.done.locked() for r in requests)
    assert len(line) == 0 and line._holder is None


def test_a_line_whose_turn_is_lost_gets_going_again():
    """A caller woken by the line who never passes the turn on (a KeyboardInterrupt between
    waking and passing, say) must not stall the callers behind it: one of them takes the turn
    over after ``stall_s``, and the lost caller, should it come back, passes nothing twice."""
    line = WakeLine(stall_s=0.05)
    lost, second, third = requests = [Request() for _ in range(3)]
    for request in requests:
        request.claim.acquire()  # answered, as the worker does first
    line.wake_in_turn(requests)
    assert lost.done.acquire(blocking=False) and lost.has_turn  # woken; passes nothing
    started = time.monotonic()
    assert line.wait(second, timeout=WAIT), "the caller behind a lost turn was never woken"
    assert time.monotonic() - started < 2.0
    assert second.has_turn and not third.has_turn
    line.pass_turn(lost)  # the lost caller comes back: too late
    assert not third.done.acquire(blocking=False), "the turn was passed twice"
    line.woken(second)
    assert line.wait(third, timeout=WAIT) and third.has_turn
    line.woken(third)
    assert len(line) == 0 and line._holder is None


def test_a_lost_turn_stalls_the_server_only_briefly(serve, monkeypatch):
    """End to end: the first caller of a run loses its turn; the other callers of that run and
    every later request are still answered, long before ``request_timeout_s``."""
    monkeypatch.setenv("PT2INTERP_HANDOFF", "fast")
    server = serve(DYN_MLP, batch_size=4, batch_timeout_ms=5000, request_timeout_s=WAIT)
    server._wakeup.stall_s = 0.05
    direct = pt2interp.load(DYN_MLP)
    lost_once = threading.Event()
    real_pass_turn = WakeLine.pass_turn

    def pass_turn_but_lose_the_first(line, holder):
        if getattr(holder, "has_turn", False) and not lost_once.is_set():
            lost_once.set()
            raise KeyboardInterrupt("simulated: arrives between waking and passing the turn")
        real_pass_turn(line, holder)

    monkeypatch.setattr(WakeLine, "pass_turn", pass_turn_but_lose_the_first)
    outcomes: dict[int, object] = {}

    def close(a, b) -> bool:
        return torch.allclose(a, b, rtol=1e-5, atol=1e-6)

    def caller(k: int) -> None:
        x = torch.full((1, 16), float(k))
        try:
            outcomes[k] = close(server.predict(x), direct(x))
        except KeyboardInterrupt:
            outcomes[k] = "interrupted"

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert lost_once.is_set()
    assert sorted(map(str, outcomes.values())) == ["True"] * 3 + ["interrupted"]
    assert time.monotonic() - started < 5.0, (
        "the callers behind the lost turn waited for their timeout"
    )
    for _ in range(3):  # and the server goes on (full runs)
        x = torch.randn(4, 16)
        assert close(server.predict(x), direct(x))
