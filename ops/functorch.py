"""functorch's transform calls, as training IR records ``torch.vmap`` and ``torch.func.jvp``.

Export's training IR (torch 2.11 and later) does not lower ``vmap``, ``jvp`` or a generic
``associative_scan`` to ATen: it records the transform's own bookkeeping calls
(``torch._functorch.predispatch._vmap_increment_nesting``, ``_add_batch_dim``, ...) around the
ATen body, and torch's loader runs them by looking the dotted name up on ``torch``. pt2interp
never looks a name from a file up: :data:`ADMITTED` is the table of the calls it runs, each with
what it does, and each runs a fixed ``torch._C`` function chosen here.

These calls change per-thread interpreter state (functorch's transform stack, forward-mode AD's
dual level), so two things keep a graph from leaving that state changed: :func:`check_balanced`
refuses, before anything runs, a graph whose enters and exits do not pair up in order, and
:func:`unwind` (called by the interpreter whenever a run fails) exits every level a kernel here
entered on this thread and did not leave.
"""

from __future__ import annotations

import threading

from pt2interp.errors import GraphError
from pt2interp.ops.registry import Call, register

_PREFIX = "torch._functorch.predispatch."


class _Entered(threading.local):
    def __init__(self):
        # ("vmap" / "jvp" / "dual", level, ...), innermost last; a jvp level keeps the forward-AD
        # setting it replaced
        self.levels: list[tuple] = []


_entered = _Entered()


def _functorch():
    import torch

    return torch._C._functorch


def _current_level() -> int | None:
    return _functorch().maybe_current_level()


def _check_level(level: int, what: str) -> None:
    # The level is a constant export recorded; run inside another transform, it names the wrong one
    current = _current_level()
    if level != current:
        raise RuntimeError(
            f"{what} names functorch level {level}, but this run is at level {current}: "
            "the program was exported at the top level and must run there, not inside "
            "another vmap or jvp"
        )


def _vmap_increment_nesting(batch_size: int, randomness: str) -> int:
    if randomness not in ("error", "different", "same"):
        raise ValueError(
            f"vmap randomness must be 'error', 'different' or 'same', not {randomness!r}"
        )
    level = _functorch()._vmap_increment_nesting(batch_size, randomness)
    _entered.levels.append(("vmap", level))
    return level


def _vmap_decrement_nesting() -> int:
    _pop("vmap")
    return _functorch()._vmap_decrement_nesting()


def _add_batch_dim(tensor, batch_dim: int, level: int):
    _check_level(level, "_add_batch_dim")
    return _functorch()._add_batch_dim(
        tensor, tensor.ndim + batch_dim if batch_dim < 0 else batch_dim, level
    )


def _remove_batch_dim(tensor, level: int, batch_size: int, out_dim: int):
    _check_level(level, "_remove_batch_dim")
    return _functorch()._remove_batch_dim(tensor, level, batch_size, out_dim)


def _jvp_increment_nesting() -> int:
    import torch

    # torch.func.jvp turns forward-mode AD on inside its level (inference mode turns it off), and
    # export does not record that: the level carries the setting to restore on leaving
    level = _functorch()._jvp_increment_nesting()
    _entered.levels.append(("jvp", level, torch._C._is_fwd_grad_enabled()))
    torch._C._set_fwd_grad_enabled(True)
    return level


def _jvp_decrement_nesting() -> int:
    import torch

    torch._C._set_fwd_grad_enabled(_pop("jvp")[2])
    return _functorch()._jvp_decrement_nesting()


def _unwrap_for_grad(tensor, level: int):
    return _functorch()._unwrap_for_grad(tensor, level)


def _enter_dual_level() -> int:
    import torch

    level = torch._C._enter_dual_level()
    _entered.levels.append(("dual", level))
    return level


def _exit_dual_level(*, level: int) -> None:
    import torch

    _pop("dual")
    torch._C._exit_dual_level(level=level)


def _make_dual(tensor, tangent, *, level: int):
    import torch

    return torch._VF._make_dual(tensor, tangent, level=level)


def _unpack_dual(tensor, *, level: int):
    import torch

    return tuple(torch._VF._unpack_dual(tensor, level=level))


def _lazy_load_decompositions() -> None:
    # vmap's Python decompositions (registered once per process, as torch.vmap itself does)
    from torch._functorch import vmap

    vmap.lazy_load_decompositions()


def _pop(kind: str) -> tuple:
    if not _entered.levels or _entered.levels[-1][0] != kind:
        entered = [e[0] for e in _entered.levels] or "none"
        raise RuntimeError(f"leaves a {kind} level it did not enter (entered: {entered})")
    return _entered.levels.pop()


def unwind() -> None:
    """Leave every level a kernel here entered on this thread (after a failed run)."""
    import torch

    levels = _entered.levels
    while levels:
        kind, level, *saved = levels.pop()
        try:
            if kind == "dual":
                torch._C._exit_dual_level(level=level)
            elif kind == "vmap":
                _functorch()._vmap_decrement_nesting()
            else:
                torch._C._set_fwd_grad_enabled(saved[0])
                _functorch()._jvp_decrement_nesting()
        except RuntimeError:  # torch already left it
            pass


# target name -> (kernel, what it does, enters, exits). Python source is the call itself.
ADMITTED: dict[str, tuple] = {
    "lazy_load_decompositions": (
        _lazy_load_decompositions,
        "registers vmap's Python decompositions once per process",
        None,
        None,
    ),
    "_vmap_increment_nesting": (
        _vmap_increment_nesting,
        "enters a vmap level (batch size, randomness)",
        "vmap",
        None,
    ),
    "_vmap_decrement_nesting": (_vmap_decrement_nesting, "leaves the vmap level", None, "vmap"),
    "_add_batch_dim": (
        _add_batch_dim,
        "marks a tensor dimension as the current vmap level's batch",
        None,
        None,
    ),
    "_remove_batch_dim": (
        _remove_batch_dim,
        "moves the batch dimension back out of a vmap result",
        None,
        None,
    ),
    "_jvp_increment_nesting": (_jvp_increment_nesting, "enters a jvp level", "jvp", None),
    "_jvp_decrement_nesting": (_jvp_decrement_nesting, "leaves the jvp level", None, "jvp"),
    "_enter_dual_level": (_enter_dual_level, "enters forward-mode AD's dual level", "dual", None),
    "_exit_dual_level": (_exit_dual_level, "leaves forward-mode AD's dual level", None, "dual"),
    "_make_dual": (_make_dual, "pairs a primal with its tangent at a dual level", None, None),
    "_unpack_dual": (_unpack_dual, "splits a dual tensor into primal and tangent", None, None),
    "_unwrap_for_grad": (_unwrap_for_grad, "unwraps a jvp result from its level", None, None),
}


def _render(name: str):
    def render(c: Call) -> str:
        args = c.by_position + [f"{k}={v}" for k, v in c.keywords]
        return f"torch._functorch.predispatch.{name}({', '.join(args)})"

    return render


for _name, (_kernel, _why, _enters, _exits) in ADMITTED.items():
    register(_PREFIX + _name, kernel=_kernel, family="functorch")(_render(_name))


def uses_forward_ad(graph) -> bool:
    """Whether ``graph`` (its subgraphs included) records a ``torch.func.jvp``."""
    return any(
        n.target in (_PREFIX + "_jvp_increment_nesting", _PREFIX + "_enter_dual_level")
        for n in graph.iter_nodes()
    )


def check_balanced(targets: list[str], where: str) -> None:
    """Raise :class:`GraphError` unless the enters and exits among ``targets`` (one graph's nodes,
    in order) pair up innermost first and none is left open at the end."""
    open_levels: list[str] = []
    for target in targets:
        name = target.removeprefix(_PREFIX)
        if name == target or name not in ADMITTED:
            continue
        _kernel, _why, enters, exits = ADMITTED[name]
        if enters:
            open_levels.append(enters)
        elif exits:
            if not open_levels or open_levels[-1] != exits:
                raise GraphError(
                    f"{where}: {target} leaves a {exits} level the graph has not entered "
                    f"(open: {open_levels or 'none'})"
                )
            open_levels.pop()
    if open_levels:
        raise GraphError(
            f"{where}: the graph enters functorch levels it never leaves ({open_levels})"
        )
