"""Run a loaded program as CUDA graphs: capture once per input signature, then replay.

At small batch a GPU waits on Python: every node is a kernel launch from the interpreter's
loop. A CUDA graph records those launches once and replays them without the host, so a replay
costs about what the kernels cost. :class:`GraphCache` keeps one graph per input signature
(shapes, strides, dtypes, devices of the tensor inputs, and the values of the others, which a
graph bakes in), dropping the least recently used beyond ``max_graphs``; all graphs of a program
share one memory pool.

A call copies its inputs into the graph's static input tensors, replays, writes back inputs the
program mutates, and returns clones of the static outputs (so a later call never overwrites
what an earlier one returned) unless ``reuse_outputs=True`` asks for the static tensors
themselves. Buffers the program mutates are written by copies inside the graph, so they advance
replay by replay as in eager mode; the warm-up runs before a capture are undone.

Whether a program can be captured at all is decided beforehand (:mod:`pt2interp.capture_plan`);
the :class:`~pt2interp.loaded.LoadedProgram` runs one that cannot eagerly and says why.

:class:`EagerReplay` stands in for the CUDA recorder where there is no GPU: it "replays" by
running the program again into the same static tensors, which exercises everything here but
the capture itself.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CudaRecorder", "EagerReplay", "GraphCache", "signature_of"]

DEFAULT_MAX_GRAPHS = 8
# torch allows one capture underway at a time in a process; each server worker or program
# may start one (a new input signature), so they queue here. Reentrant: a capture that runs
# a piece which captures on its own (a subgraph) does not wait for itself.
_ONE_CAPTURE_AT_A_TIME = threading.RLock()
_WARMUP_RUNS = 3  # before a capture: lazy initialisations (cuBLAS handles, workspaces) happen here


def signature_of(leaves: Sequence[Any]) -> tuple:
    """What a captured graph depends on: each tensor's shape, strides, dtype and device, and
    the value of anything else (a graph bakes Python values in)."""
    key = []
    for v in leaves:
        if isinstance(v, torch.Tensor):
            key.append(("t", tuple(v.shape), v.stride(), v.dtype, v.device))
        elif isinstance(v, (list, tuple)):
            key.append(("s", signature_of(v)))
        else:
            key.append(("v", type(v).__name__, repr(v)))
    return tuple(key)


class CudaRecorder:
    """Captures with ``torch.cuda.graph``, every graph in one memory pool.

    Capture happens on a stream of the program's own device, with that device current:
    ``torch.cuda.graph``'s default capture stream is one per process, made on whichever device
    was current when it was first used, so a program on ``cuda:1`` would be captured from a
    stream of ``cuda:0``. The capture is ``thread_local``: under torch's default ("global") mode,
    any other thread that allocates CUDA memory while a capture runs (another model's worker, an
    HTTP handler moving a tensor) fails, and so does the capture. Captures in different threads
    take turns.
    """

    def __init__(self, device: torch.device, warmup: int = _WARMUP_RUNS):
        self.device = device
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device=device)

    def capture(self, fn: Callable[[list], list], static_inputs: list) -> tuple[Any, list]:
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    fn(static_inputs)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with (
                _ONE_CAPTURE_AT_A_TIME,
                torch.cuda.graph(
                    graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"
                ),
            ):
                outputs = fn(static_inputs)
        return graph, outputs


class EagerReplay:
    """A recorder whose "graph" runs the program again into the captured output tensors: the
    cache's behaviour (signatures, static buffers, write-backs, eviction) on any device."""

    def __init__(self, warmup: int = 1):
        self.warmup = warmup

    def capture(self, fn: Callable[[list], list], static_inputs: list) -> tuple[Any, list]:
        for _ in range(self.warmup):
            fn(static_inputs)
        outputs = fn(static_inputs)
        return _Rerun(fn, static_inputs, outputs), outputs


@dataclass
class _Rerun:
    fn: Callable[[list], list]
    static_inputs: list
    outputs: list

    def replay(self) -> None:
        for dst, src in zip(self.outputs, self.fn(self.static_inputs), strict=True):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)


@dataclass
class _Entry:
    graph: Any
    static_inputs: list
    outputs: list
    replays: int = 0


@dataclass
class _Counts:
    captures: int = 0
    replays: int = 0
    evictions: int = 0


class GraphCache:
    """One captured graph per input signature of a program.

    ``run_eager(leaves)`` runs the program once on input leaves and returns its output leaves,
    writing mutated inputs back into ``leaves``; ``mutable_state`` are the tensors it mutates
    (buffers), restored after the warm-up runs; ``mutated_inputs`` the positions of inputs it
    writes to.
    """

    def __init__(
        self,
        run_eager: Callable[[list], list],
        recorder,
        *,
        mutable_state: Sequence[torch.Tensor] = (),
        mutated_inputs: Sequence[int] = (),
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        reuse_outputs: bool = False,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, not {max_graphs}")
        self._run_eager = run_eager
        self._recorder = recorder
        self._mutable_state = list(mutable_state)
        self._mutated_inputs = list(mutated_inputs)
        self.max_graphs = max_graphs
        self.reuse_outputs = reuse_outputs
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._counts = _Counts()

    def run(self, leaves: list, given: list | None = None) -> list:
        """The output leaves of one call on ``leaves`` (on the program's device); inputs the
        program mutates are written back to ``given`` (the caller's tensors) too."""
        key = signature_of(leaves)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._capture(key, leaves)
            else:
                self._entries.move_to_end(key)
            for static, value in zip(entry.static_inputs, leaves, strict=True):
                if isinstance(static, torch.Tensor) and static is not value:
                    static.copy_(value)
            entry.graph.replay()
            entry.replays += 1
            self._counts.replays += 1
            for pos in self._mutated_inputs:
                for target in (leaves[pos], None if given is None else given[pos]):
                    if isinstance(target, torch.Tensor) and target is not entry.static_inputs[pos]:
                        target.copy_(entry.static_inputs[pos])
            if self.reuse_outputs:
                return list(entry.outputs)
            return [o.clone() if isinstance(o, torch.Tensor) else o for o in entry.outputs]

    def capture(self, leaves: list) -> bool:
        """Capture the graph for these inputs' signature now (not on a call); False if it was
        captured already. Nothing observable changes: buffers keep their values."""
        key = signature_of(leaves)
        with self._lock:
            if key in self._entries:
                return False
            self._capture(key, leaves)
            return True

    def _capture(self, key: tuple, leaves: list) -> _Entry:
        static_inputs = [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in leaves]
        saved = [t.detach().clone() for t in self._mutable_state]
        try:
            graph, outputs = self._recorder.capture(self._run_eager, static_inputs)
        finally:
            # the warm-up runs (and a stand-in's capture run) advanced the buffers: undo them
            for t, before in zip(self._mutable_state, saved, strict=True):
                t.copy_(before)
        entry = _Entry(graph, static_inputs, list(outputs))
        self._entries[key] = entry
        self._counts.captures += 1
        while len(self._entries) > self.max_graphs:
            self._entries.popitem(last=False)
            self._counts.evictions += 1
        return entry

    @property
    def evictions(self) -> int:
        """Graphs dropped so far to keep at most ``max_graphs``."""
        return self._counts.evictions

    def clear(self) -> None:
        """Drop every graph (weights moved, state replaced: the graphs read the old tensors)."""
        with self._lock:
            self._entries.clear()

    def info(self) -> dict:
        """Graphs held, captures, replays and evictions so far, and the most kept."""
        with self._lock:
            return {
                "graphs": len(self._entries),
                "max_graphs": self.max_graphs,
                "captures": self._counts.captures,
                "replays": self._counts.replays,
                "evictions": self._counts.evictions,
                "reuse_outputs": self.reuse_outputs,
            }
