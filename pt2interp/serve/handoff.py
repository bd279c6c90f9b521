"""How requests pass between a server's threads: callers queue requests for the worker
(:class:`RequestQueue`), and the worker wakes the callers it has answered (:class:`Wakeup`).

Two implementations of each, chosen together by :func:`make_handoff`:

* ``"plain"``: :class:`LockedQueue` keeps the queue under one :class:`threading.Condition`, and
  :class:`DirectWake` wakes each answered caller at once. Correct wherever threads are.
* ``"fast"``: :class:`LockFreeQueue` and :class:`WakeLine` spare callers a shared lock and wake
  a round's callers one after another. Their correctness rests on the GIL, so they are the
  default only where it is on.

``PT2INTERP_HANDOFF=plain`` or ``fast`` forces either (read when a server is made). Why the fast
pair exists and what it buys: ``benchmarks/NOTES.md``.

A request here is anything with ``rows`` (at least 1, fixed once queued), ``done`` (a lock held
from birth and released once, to wake its caller), ``finished`` (answered), and the flags
``has_turn`` and ``abandoned`` (False at birth; the wake line's).

>>> import types, threading
>>> def request(rows=1):
...     done = threading.Lock()
...     done.acquire()
...     return types.SimpleNamespace(
...         rows=rows, done=done, finished=True, has_turn=False, abandoned=False
...     )
>>> for kind in ("plain", "fast"):
...     queue, wakeup = make_handoff(kind)
...     first, second = request(), request(3)
...     queue.put(first), queue.put(second), len(queue)
...     queue.take(rows=4) == [first, second]
...     wakeup.wake_in_turn([first, second])
...     wakeup.wait(first, timeout=1.0), wakeup.woken(first), wakeup.wait(second, timeout=1.0)
(True, True, 2)
True
(True, None, True)
(True, True, 2)
True
(True, None, True)
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
from typing import Any, NamedTuple, Protocol

ENV_VAR = "PT2INTERP_HANDOFF"
KINDS = ("plain", "fast")


class RequestQueue(Protocol):
    """A FIFO of requests: any thread puts, the worker takes."""

    kind: str
    closed: bool

    def __len__(self) -> int:
        """Requests queued now."""

    def put(self, request: Any) -> bool:
        """Queue ``request``; False (and nothing queued) once the queue is closed."""

    def take(
        self, rows: int = 1, deadline: float | None = None, most: int | None = None
    ) -> list[Any]:
        """Wait until ``rows`` rows are queued, ``deadline`` (``time.monotonic()``) passes or
        the queue closes; then take up to ``most`` requests (possibly none). Worker only."""

    def take_all(self) -> list[Any]:
        """Everything queued, at once."""

    def close(self) -> None:
        """Refuse new requests and wake the worker, which takes what is queued and ends."""


class Wakeup(Protocol):
    """How answered callers wake. A caller waits with :meth:`wait`; once woken (True) it calls
    :meth:`woken` first thing; one that gives up calls :meth:`abandon` instead."""

    kind: str

    def wake(self, request: Any) -> None:
        """Wake one answered caller now."""

    def wake_in_turn(self, requests: list[Any]) -> None:
        """Wake the callers of one worker round's answered requests, in order."""

    def wait(self, request: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``request``'s caller to be woken (True) or not."""

    def woken(self, request: Any) -> None:
        """The caller of ``request`` has been woken: it does its part for those behind it."""

    def abandon(self, request: Any) -> bool:
        """The caller gives up waiting; True if it was woken meanwhile (then it is woken as
        after :meth:`wait`, and calls :meth:`woken`)."""


class Handoff(NamedTuple):
    queue: RequestQueue
    wakeup: Wakeup


def handoff_kind(kind: str | None = None) -> str:
    """``kind`` if given, else ``$PT2INTERP_HANDOFF`` if set, else ``"fast"`` where the GIL is
    on and ``"plain"`` where it is off (free-threaded CPython).

    >>> handoff_kind("plain")
    'plain'
    >>> handoff_kind("quick")
    Traceback (most recent call last):
    ...
    ValueError: hand-off 'quick': choose 'plain' or 'fast'
    """
    if kind is None:
        kind = os.environ.get(ENV_VAR) or None
        source = f"{ENV_VAR}={kind!r}"
    else:
        source = f"hand-off {kind!r}"
    if kind is None:
        # Asked anew each time: an extension module can switch the GIL back on at import.
        return "fast" if getattr(sys, "_is_gil_enabled", lambda: True)() else "plain"
    if kind not in KINDS:
        raise ValueError(f"{source}: choose 'plain' or 'fast'")
    return kind


def make_handoff(kind: str | None = None) -> Handoff:
    """A new queue and wake-up of the given kind (see :func:`handoff_kind`)."""
    if handoff_kind(kind) == "fast":
        return Handoff(LockFreeQueue(), WakeLine())
    return Handoff(LockedQueue(), DirectWake())


# -- plain ----------------------------------------------------------------------------------------
class LockedQueue:
    """The queue, its row count and ``closed`` under one condition. The worker waits on it
    saying how many rows it wants; a producer notifies it once that many are queued."""

    kind = "plain"

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Any] = collections.deque()
        self._rows = 0  # rows queued
        self._wanted: int | None = None  # rows the waiting worker wants; None: not waiting
        self.closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, request: Any) -> bool:
        with self._cond:
            if self.closed:
                return False
            self._items.append(request)
            self._rows += request.rows
            if self._wanted is not None and self._rows >= self._wanted:
                self._cond.notify()
            return True

    def take(
        self, rows: int = 1, deadline: float | None = None, most: int | None = None
    ) -> list[Any]:
        rows = max(1, rows)
        with self._cond:
            while not self.closed and self._rows < rows:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                self._wanted = rows
                try:
                    self._cond.wait(timeout)
                finally:
                    self._wanted = None
            return self._pop(len(self._items) if most is None else most)

    def take_all(self) -> list[Any]:
        with self._cond:
            return self._pop(len(self._items))

    def _pop(self, count: int) -> list[Any]:  # holding the lock
        items = self._items
        taken = [items.popleft() for _ in range(min(count, len(items)))]
        self._rows -= sum(request.rows for request in taken)
        return taken

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class DirectWake:
    """Each answered caller is woken by releasing its request's ``done``, which only its caller
    acquires: once by :meth:`wait`, or, having given up, by :meth:`abandon`."""

    kind = "plain"

    def wake(self, request: Any) -> None:
        request.done.release()

    def wake_in_turn(self, requests: list[Any]) -> None:
        for request in requests:
            request.done.release()

    def wait(self, request: Any, timeout: float) -> bool:
        return request.done.acquire(timeout=max(0.0, timeout))

    def woken(self, request: Any) -> None:
        pass

    def abandon(self, request: Any) -> bool:
        return request.done.acquire(blocking=False)


# -- fast (GIL only) ------------------------------------------------------------------------------
class LockFreeQueue:
    """Producers take no lock, and the worker is woken only when there is enough to do: a
    waiting worker works out how long the queue must grow to hold the rows it wants, and
    producers ring for it only once it is that long (or always, for a request of several rows).

    Relies on, under the GIL: ``deque.append``, ``popleft`` and ``remove`` and ``list(deque)``
    are each atomic, and the flags are read and written in program order. One thread takes at a
    time (the worker; or shutdown, once the worker is stopped or stuck in a run).

    * No lost wake-up: the worker sets ``_sleeping`` before its last look at the queue, and a
      producer reads ``_sleeping`` after its append; one of the two sees the other. A needless
      ring costs the worker one more look.
    * No request stranded by :meth:`close`: a producer that finds the queue closed after its
      append takes the request back, unless the worker has it already.
    """

    kind = "fast"

    def __init__(self):
        self._items: collections.deque[Any] = collections.deque()
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._ring_at = 1  # queue length at which producers ring for a sleeping worker
        self._sleeping = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def _requests_needed(self, rows: int) -> int:
        """The queue length that guarantees ``rows`` queued rows, from what is queued now: every
        request holds at least one row, so each one that arrives brings one or more."""
        items = self._items
        if len(items) >= rows:
            return 0
        queued = list(items)  # one atomic copy: no append interleaves
        pending = 0
        for request in queued:
            pending += request.rows
        return 0 if pending >= rows else len(queued) + rows - pending

    def put(self, request: Any) -> bool:
        if self.closed:
            return False
        items = self._items
        items.append(request)
        if self.closed:  # closed meanwhile: withdraw it unless the worker has it already
            try:
                items.remove(request)
                return False
            except ValueError:
                return True
        if self._sleeping and (len(items) >= self._ring_at or request.rows > 1):
            self._bell.put(None)
        return True

    def take(
        self, rows: int = 1, deadline: float | None = None, most: int | None = None
    ) -> list[Any]:
        rows = max(1, rows)
        try:
            while not self.closed:
                needed = self._requests_needed(rows)
                if not needed:
                    break
                self._ring_at = needed
                self._sleeping = True
                if self.closed or not self._requests_needed(rows):
                    break
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                try:
                    self._bell.get(timeout=timeout)
                except queue.Empty:
                    break
                finally:
                    self._sleeping = False
        finally:
            self._sleeping = False
        return self._pop(len(self._items) if most is None else most)

    def take_all(self) -> list[Any]:
        return self._pop(len(self._items))

    def _pop(self, count: int) -> list[Any]:
        taken = []
        items = self._items
        for _ in range(count):
            try:
                taken.append(items.popleft())
            except IndexError:
                break
        return taken

    def close(self) -> None:
        self.closed = True
        self._bell.put(None)


class WakeLine:
    """A round's answered callers are woken one after another, in the order answered, each by
    the one before (the worker wakes the first): one line per server.

    The turn to wake the next caller is a token: ``_holder``, changed only under ``_lock``, says
    who has it, and only they can pass it (:meth:`pass_turn`).

    * Woken exactly once: a caller giving up sets ``abandoned`` and then tries
      ``done.acquire(blocking=False)``; whoever wakes it releases ``done`` and then, if
      ``abandoned``, tries the same. Exactly one of the two gets ``done``; if the waker does,
      the caller is gone and the waker keeps the turn. This ordering of a flag against a lock
      is what needs the GIL.
    * No stall: a caller who never passes its turn on (a ``KeyboardInterrupt`` between waking
      and passing, say) would hold up everyone behind it, so callers wait in slices of
      ``stall_s``, and one whose request is answered but who finds the turn unmoved for
      ``stall_s`` takes it over (:meth:`wait`). The old holder, should it come back, is no
      longer ``_holder`` and passes nothing.
    """

    kind = "fast"

    def __init__(self, stall_s: float = 0.25):
        self.stall_s = stall_s
        self._waiting: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._holder: object | None = None  # who wakes the next caller; None: nobody waits
        self._moved = time.monotonic()  # when the turn last changed hands

    def __len__(self) -> int:
        return len(self._waiting)

    def wake(self, request: Any) -> None:
        request.done.release()  # has_turn stays False: it passes nothing on

    def wake_in_turn(self, requests: list[Any]) -> None:
        """Line up ``requests`` behind those waiting; start waking them if nobody is."""
        if requests:
            self._waiting.extend(requests)
            self._take_turn(only_if_idle=True)

    def wait(self, request: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if request.done.acquire(timeout=max(0.0, min(remaining, self.stall_s))):
                return True
            if remaining <= 0:
                return False
            if request.finished:  # answered, yet not woken: is the line stuck?
                self._take_turn(only_if_idle=False)

    def woken(self, request: Any) -> None:
        if request.has_turn:
            self.pass_turn(request)  # first thing: the next caller's wait is on us

    def abandon(self, request: Any) -> bool:
        request.abandoned = True
        return request.done.acquire(blocking=False)

    def _take_turn(self, only_if_idle: bool) -> None:
        token = object()
        with self._lock:
            if self._holder is not None and (
                only_if_idle or time.monotonic() - self._moved < self.stall_s
            ):
                return
            self._holder, self._moved = token, time.monotonic()
        self.pass_turn(token)

    def pass_turn(self, holder: object) -> None:
        """Wake the next caller in line, if ``holder`` has the turn."""
        waiting = self._waiting
        while True:
            with self._lock:
                if self._holder is not holder:
                    return  # taken over while we were away
                if not waiting:
                    self._holder = None
                    return
                holder = waiting.popleft()
                self._holder, self._moved = holder, time.monotonic()
            holder.has_turn = True
            holder.done.release()
            if not (holder.abandoned and holder.done.acquire(blocking=False)):
                return
