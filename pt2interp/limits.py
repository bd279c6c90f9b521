"""Resource budgets for untrusted archives: how much work a ``.pt2`` may ask for.

A hostile file can ask for work without end: a ``while_loop`` whose predicate never turns
false, a Python-level string doubled forty times, a zip of a million members, a graph of a
million nodes. Each budget below is checked *before* the cost is paid, and going over one
raises a :class:`~pt2interp.errors.Pt2Error` subclass naming the budget, so a caller who
trusts a file (or serves a model that needs more) raises it:

>>> from pt2interp import limits
>>> limits.current().max_loop_iterations
100000
>>> with limits.override(max_loop_iterations=10):
...     limits.current().max_loop_iterations
10
>>> limits.current().max_loop_iterations
100000

:func:`override` applies to the calling thread (and tasks it starts) until the block ends;
:func:`set_defaults` changes the defaults for the whole process. Tensor memory that ATen
kernels allocate is not counted here: torch refuses what the machine cannot allocate.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Limits", "call_budget", "charge_python_value", "current", "override", "set_defaults"]


@dataclass(frozen=True)
class Limits:
    """The budgets, with their defaults.

    * ``max_archive_members``: zip entries an archive (or a pickled payload inside it) may
      list; checked from the zip's end record before its directory is read.
    * ``max_program_bytes``: size of a program's JSON member, checked before it is read.
    * ``max_graph_nodes``: nodes in a program, subgraphs included, checked before they are
      built.
    * ``max_loop_iterations``: iterations of one ``while_loop`` (and of the other looping
      higher-order ops) in one call.
    * ``max_python_value_bytes``: size of one string, bytes, list or tuple a Python-level op
      (``_operator.add``, ``_operator.mul``, formatting) may produce.
    * ``max_python_bytes_per_call``: all such values together in one call of a program.
    """

    max_archive_members: int = 100_000
    max_program_bytes: int = 512 << 20
    max_graph_nodes: int = 200_000
    max_loop_iterations: int = 100_000
    max_python_value_bytes: int = 16 << 20
    max_python_bytes_per_call: int = 256 << 20

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"limit {f.name} must be a non-negative int, got {value!r}")


_DEFAULTS = [Limits()]
_CURRENT: contextvars.ContextVar[Limits | None] = contextvars.ContextVar(
    "pt2interp_limits", default=None
)


def current() -> Limits:
    """The budgets in force here: an enclosing :func:`override`, else the process defaults."""
    return _CURRENT.get() or _DEFAULTS[0]


@contextlib.contextmanager
def override(**changes: int) -> Iterator[Limits]:
    """Budgets changed for the block (``with override(max_graph_nodes=2_000_000): ...``)."""
    token = _CURRENT.set(dataclasses.replace(current(), **changes))
    try:
        yield current()
    finally:
        _CURRENT.reset(token)


def set_defaults(**changes: int) -> Limits:
    """Change the process-wide defaults (every thread); returns the new defaults."""
    _DEFAULTS[0] = dataclasses.replace(_DEFAULTS[0], **changes)
    return _DEFAULTS[0]


# What Python-level values the current program call may still allocate (a one-item list, so
# nested subgraph runs share it); None outside a call.
_CALL_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "pt2interp_call_budget", default=None
)


@contextlib.contextmanager
def call_budget() -> Iterator[None]:
    """One program call: Python-level values made inside share ``max_python_bytes_per_call``."""
    token = _CALL_BUDGET.set([current().max_python_bytes_per_call])
    try:
        yield
    finally:
        _CALL_BUDGET.reset(token)


def charge_python_value(nbytes: int, what: str) -> None:
    """Account for a Python value of about ``nbytes`` that an op is about to make, refusing it
    (:class:`~pt2interp.errors.LimitError`) before it is made when it is over a budget."""
    from pt2interp.errors import LimitError

    budget = current()
    if nbytes > budget.max_python_value_bytes:
        raise LimitError(
            f"{what} would make a value of about {nbytes} bytes, over the "
            f"{budget.max_python_value_bytes} one value may take",
            limit="max_python_value_bytes",
        )
    left = _CALL_BUDGET.get()
    if left is not None:
        left[0] -= nbytes
        if left[0] < 0:
            raise LimitError(
                f"{what}: Python-level values of this call would pass "
                f"{budget.max_python_bytes_per_call} bytes",
                limit="max_python_bytes_per_call",
            )
