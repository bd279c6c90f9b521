"""Run a program a single CUDA graph cannot hold as captured segments around its blockers.

A program with a ``.item()``, a ``nonzero`` or a ``cond`` on data needs the host at that node,
but the runs of nodes between such blockers need it no more than a whole program does. The
:class:`~pt2interp.capture_plan.CapturePlan` lists those runs and which are long enough to be
worth a graph (``captured``); :class:`SegmentedRun` runs the blockers and short runs eagerly
and each captured run through a :class:`~pt2interp.cuda_graphs.GraphCache` of its own, keyed
by the signature of the values it reads from the eager part. All graphs share the recorder's
memory pool. A ``cond`` on data or a ``while_loop`` runs eagerly (the host picks the branch,
or reads the condition every round), but its branches, condition and body, where long enough,
are replayed from their own graph caches as the op calls them (``captured_subgraphs``).

What crosses a boundary is copied: a segment's inputs into its static tensors, its outputs
out of them (parameters and buffers are read in place). So a run is refused a graph, and runs
eagerly with the reason in ``info()``, where a copy would change what the program means:

* a later node writes in place (training IR keeps ``relu_`` and ``add_``) into a value the
  segment hands on, or a view of one, while that value's memory is shared with anything else
  (it is a view of a buffer, an input or another value handed on): the write would land in the
  copy alone;
* the segment writes into a value it reads whose memory another value it reads shares;
* it lies inside a ``vmap``/``jvp`` level, or enters one without leaving it (functorch's
  wrapped tensors do not survive a copy, and warm-up runs would enter the level again).

Values a segment writes in place are written back to the tensors it read them from, and state
it writes is put back after the warm-up runs. After a data-dependent blocker a segment's input
sizes can change with the data; a segment that has had to drop ``max_graphs`` graphs (its
signatures keep changing) runs eagerly from then on, since capturing on nearly every call
costs more than it saves. So does one whose capture fails (an op the plan did not know to need
the host).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pt2interp.capture_plan import CapturePlan
from pt2interp.cuda_graphs import GraphCache
from pt2interp.errors import GraphError, Pt2Error
from pt2interp.interpreter import CompiledGraph, Subgraph, node_writes
from pt2interp.kinds import ArgKind
from pt2interp.ops import functorch, registry
from pt2interp.schema import Node

__all__ = ["SegmentedRun"]


class _GraphsOrEager:
    """What both kinds of piece share: a graph cache, or the reason it runs eagerly."""

    graphs: GraphCache | None
    why_eager: str
    dropped_captures: int  # captures of graphs it no longer holds (it turned eager)

    def turn_eager(self, why: str) -> None:
        if self.graphs is not None:
            self.dropped_captures += self.graphs.info()["captures"]
            self.graphs.clear()
        self.graphs = None
        self.why_eager = why

    def captures(self) -> int:
        return self.dropped_captures + (self.graphs.info()["captures"] if self.graphs else 0)

    def state(self) -> dict:
        """How it runs, for ``info()``: its graph counts, or why it runs eagerly."""
        if self.graphs is not None:
            return {**self.graphs.info(), "runs": "graphs"}
        if not self.why_eager:
            return {"runs": "eager"}  # blockers, and runs too short to pay
        return {"runs": "eager", "why": self.why_eager, "captures": self.dropped_captures}


@dataclass
class _Piece(_GraphsOrEager):
    """Nodes ``[start, end)`` of the plan, run eagerly or as graphs."""

    start: int
    end: int
    steps: list
    graphs: GraphCache | None = None
    why_eager: str = ""
    reads: list[int] = field(default_factory=list)  # slots read from before the segment
    writes: list[int] = field(default_factory=list)  # slots it sets that later nodes read
    frees: tuple[int, ...] = ()  # slots whose last reader is in it
    dropped_captures: int = 0


@dataclass
class _SubgraphPiece(_GraphsOrEager):
    """A cond's branch or a while_loop's condition or body, replayed from the op."""

    node: int
    name: str
    subgraph: Subgraph | None = None
    graphs: GraphCache | None = None
    why_eager: str = ""
    dynamic: list[int] = field(default_factory=list)  # operand positions copied in
    dropped_captures: int = 0

    def turn_eager(self, why: str) -> None:
        super().turn_eager(why)
        if self.subgraph is not None:
            self.subgraph.runner = self.subgraph.plan.run


class SegmentedRun:
    """Runs a :class:`CompiledGraph` with the capture plan's captured segments as graphs.

    ``fixed``: graph input index → the value every call passes there (parameters, buffers,
    constants): a graph reads those in place rather than copying them in. ``recorder``: how to
    capture (:class:`~pt2interp.cuda_graphs.CudaRecorder`, or the CPU stand-in
    :class:`~pt2interp.cuda_graphs.EagerReplay`). Call :meth:`run` as ``plan.run``.
    """

    def __init__(
        self,
        plan: CompiledGraph,
        capture_plan: CapturePlan,
        fixed: dict[int, Any],
        recorder,
        *,
        max_graphs: int,
    ):
        self.plan = plan
        self.max_graphs = max_graphs
        self._recorder = recorder
        self._lock = threading.Lock()  # the graphs share one pool: one run at a time
        nodes = plan.graph.nodes
        self._fixed_slots = {
            plan.input_slots[i]: v for i, v in fixed.items() if plan.input_slots[i] is not None
        }
        self._reads = [{r for na in n.inputs for r in na.arg.refs()} for n in nodes]
        self._defines = [{r for out in n.outputs for r in out.refs()} for n in nodes]
        self._writes = [node_writes(n) for n in nodes]
        self._aliases = [_aliased_inputs(n) for n in nodes]
        # whose memory each value of the program is (an input's, or a node's new tensor)
        self._root = self._memory_roots(
            0, len(nodes), {r for a in plan.graph.inputs for r in a.refs()}
        )
        self._last_read: dict[str, int] = {}  # name → the last node reading it
        for i, names in enumerate(self._reads):
            for r in names:
                self._last_read[r] = i
        for a in plan.graph.outputs:
            for r in a.refs():
                self._last_read[r] = len(nodes)  # an output: read after every node

        self.pieces: list[_Piece] = []
        start = 0
        for a, b in [*sorted(capture_plan.captured), (len(nodes), len(nodes))]:
            if a > start:
                self.pieces.append(_Piece(start, a, plan.steps_between(start, a)))
            if a < b:
                self.pieces.append(self._segment(a, b))
            start = b
        self._capture_only = False  # set while a run captures ahead (see run())
        self.subgraphs = [self._subgraph(i, name) for i, name in capture_plan.captured_subgraphs]

    def _segment(self, a: int, b: int) -> _Piece:
        piece = _Piece(a, b, self.plan.steps_between(a, b))
        slot_of = self.plan.slot_of
        inside = set().union(*self._defines[a:b])
        needed = set().union(*self._reads[a:b]) - inside
        handed = sorted(r for r in inside if self._last_read.get(r, -1) >= b)
        root = self._memory_roots(a, b, needed)
        piece.why_eager = self._why_not_a_graph(a, b, needed, handed, root)
        if piece.why_eager:
            return piece
        piece.frees = tuple(sorted({s for _, free in piece.steps for s in free}))
        piece.reads = sorted(slot_of[r] for r in needed if slot_of[r] not in self._fixed_slots)
        piece.writes = [slot_of[r] for r in handed]
        fixed_read = {
            s: self._fixed_slots[s]
            for s in sorted(slot_of[r] for r in needed)
            if s in self._fixed_slots
        }
        # what it writes into, through views too: read values written go back to the tensors
        # they came from, and written state is put back after the warm-up runs
        hit = {root.get(r, r) for r in set().union(*self._writes[a:b])}
        hit_slots = (
            {slot_of[r] for r in needed} if "*" in hit else {slot_of[r] for r in needed & hit}
        )
        piece.graphs = GraphCache(
            _segment_function(self.plan, piece, fixed_read),
            self._recorder,
            mutable_state=[v for s, v in fixed_read.items() if s in hit_slots],
            mutated_inputs=[k for k, s in enumerate(piece.reads) if s in hit_slots],
            max_graphs=self.max_graphs,
        )
        return piece

    def _why_not_a_graph(self, a: int, b: int, needed: set, handed: list, root: dict) -> str:
        """Why nodes ``a`` to ``b - 1`` must run eagerly, or "" where a graph can hold them."""
        if not _balanced(self.plan.graph.nodes[:a]):
            # inside a vmap or jvp: its values are functorch's wrappers, which copies would strip
            return "it runs inside a vmap or jvp level"
        if not _balanced(self.plan.graph.nodes[a:b]):
            # a warm-up run would enter the level again and again
            return "it enters or leaves a vmap or jvp level without the other"
        shared = self._shared_and_written_later(b, needed, handed, root)
        if shared:
            return (
                f"a later node writes in place into {shared!r}, which it hands on, and a copy "
                "would not share that value's memory as the program does"
            )
        clash = self._writes_shared_input(a, b, needed, root)
        if clash:
            return (
                f"it writes into {clash!r}, whose memory another value it reads shares, and "
                "copies of the two would not"
            )
        if any(r not in self.plan.slot_of for r in needed | set(handed)):
            return "it reads or hands on a list of tensors held as one value"
        return ""

    def _subgraph(self, i: int, name: str) -> _SubgraphPiece:
        """Replay subgraph ``name`` of node ``i`` (a cond or while_loop the plan runs eagerly)
        from a graph cache of its own: its operands that are parameters or buffers are read in
        place, the others copied in."""
        piece = _SubgraphPiece(i, name)
        node = self.plan.graph.nodes[i]
        sub = next((g for g in self.plan.steps[i].subgraphs if g.name == name), None)
        lists = [na.arg for na in node.inputs if na.arg.kind is ArgKind.TENSORS]
        if sub is None or not lists:
            piece.why_eager = "its operands are no list of tensors"
            return piece
        if not _balanced(self.plan.graph.nodes[:i]):
            piece.why_eager = "it runs inside a vmap or jvp level"
            return piece
        if any(node_writes(n) for n in sub.plan.graph.nodes):
            piece.why_eager = "it writes in place"
            return piece
        # the subgraph's inputs are the op's operand lists, in order (cond: the operands;
        # while_loop: the carried values, which change every round, then the others)
        refs = [r for arg in lists for r in arg.refs()]
        changing = len(lists[0].refs()) if _op(node) == "while_loop" else 0
        fixed = {
            pos: self._fixed_slots[self.plan.slot_of[r]]
            for pos, r in enumerate(refs)
            if pos >= changing and self.plan.slot_of.get(r) in self._fixed_slots
        }
        piece.dynamic = [pos for pos in range(len(refs)) if pos not in fixed]
        template = [fixed.get(pos) for pos in range(len(refs))]

        def run_subgraph(values: Sequence[Any]) -> list:
            operands = list(template)
            for pos, v in zip(piece.dynamic, values):
                operands[pos] = v
            return sub.plan.run(operands)

        piece.graphs = GraphCache(run_subgraph, self._recorder, max_graphs=self.max_graphs)
        piece.subgraph = sub
        sub.runner = functools.partial(self._replay_subgraph, piece, len(refs))
        return piece

    def _replay_subgraph(self, piece: _SubgraphPiece, expected: int, operands: list) -> list:
        outs = None
        if piece.graphs is not None and len(operands) == expected:
            outs = self._replayed(piece, [operands[pos] for pos in piece.dynamic])
        return piece.subgraph.plan.run(operands) if outs is None else outs

    def _replayed(self, piece: _GraphsOrEager, values: list) -> list | None:
        """The outputs of ``piece``'s graph for ``values``, or None where the piece is to run
        eagerly this time: capturing ahead (captured now), or its capture just failed. A piece
        whose sizes keep changing turns eager for the calls after this one."""
        try:
            if self._capture_only:
                piece.graphs.capture(values)
                return None
            outs = piece.graphs.run(values)
        except Pt2Error:
            raise  # a node failed, as it would have eagerly
        except Exception as exc:  # the capture or replay itself: eagerly from now on
            piece.turn_eager(f"capturing it failed ({_first_line(exc)})")
            return None
        if piece.graphs.evictions >= self.max_graphs:
            piece.turn_eager(_CHANGING_SIZES.format(n=self.max_graphs))
        return outs

    def _memory_roots(self, a: int, b: int, needed: set) -> dict[str, str]:
        """Whose memory each value of nodes ``a`` to ``b - 1`` is: a value it reads, a node's
        own new tensor, or ``*`` (one of several)."""
        root = {r: r for r in needed}
        for i in range(a, b):
            via = self._aliases[i]
            for r in self._defines[i]:
                if not via:
                    root[r] = r
                elif len(via) == 1:
                    root[r] = root.get(via[0], via[0])
                else:
                    root[r] = "*"
        return root

    def _writes_shared_input(self, a: int, b: int, needed: set, root: dict) -> str | None:
        """A value the segment reads and writes into (directly or through a view) whose memory
        another value it reads shares (a view of it, or both of one tensor), or None."""
        hit = {root.get(r, r) for r in set().union(*self._writes[a:b])} & (needed | {"*"})
        if not hit:
            return None
        owners: dict[str, list[str]] = {}
        for r in sorted(needed):
            owners.setdefault(self._root.get(r, r), []).append(r)
        for r in sorted(needed):
            if ("*" in hit or r in hit) and (
                len(owners[self._root.get(r, r)]) > 1 or self._root.get(r) == "*"
            ):
                return r
        return None

    def _shared_and_written_later(
        self, b: int, needed: set, handed: list, root: dict[str, str]
    ) -> str | None:
        """A value the segment hands on that a later node writes into (directly or through a
        view) while its memory is shared with something else, or None."""
        owners: dict[str, int] = {}
        for h in handed:
            owners[root[h]] = owners.get(root[h], 0) + 1
        private = {h for h in handed if root[h] not in needed and root[h] != "*"}
        private = {h for h in private if owners[root[h]] == 1}
        # after the segment: which handed-on value's memory each value is
        after = {h: h for h in handed}
        for i in range(b, len(self._reads)):
            via = [after[r] for r in self._aliases[i] if r in after]
            if via:
                for r in self._defines[i]:
                    after[r] = via[0]
            for r in self._writes[i]:
                if r in after and after[r] not in private:
                    return after[r]
        return None

    def run(self, inputs: list, *, capture_only: bool = False) -> list:
        """The graph's outputs for ``inputs`` (as :meth:`CompiledGraph.run`). ``capture_only``:
        capture the graphs these inputs need and run every piece eagerly (ahead of serving: no
        replay counted)."""
        plan = self.plan
        env = plan.start(inputs)
        with self._lock:
            self._capture_only = capture_only
            try:
                self._run_pieces(env)
            except BaseException:
                functorch.unwind()  # a failure inside a vmap must not leave this thread in it
                raise
            finally:
                self._capture_only = False
        return plan.finish(env)

    def _run_pieces(self, env: list) -> None:
        for piece in self.pieces:
            outs = None
            if piece.graphs is not None:
                outs = self._replayed(piece, [env[s] for s in piece.reads])
            if outs is None:
                self.plan.run_steps(env, piece.steps)
                continue
            for s in piece.frees:
                env[s] = None
            for s, v in zip(piece.writes, outs, strict=True):
                env[s] = v

    def captures(self) -> int:
        """Graphs captured so far, over every segment and subgraph (those since dropped
        included)."""
        return sum(p.captures() for p in (*self.pieces, *self.subgraphs))

    def info(self) -> list[dict]:
        """Each piece: its nodes, whether it runs as graphs (else why not), and its graph
        counts."""
        out = []
        for p in self.pieces:
            item = {"nodes": [p.start, p.end], **p.state()}
            if p.graphs is not None:
                item.update(reads=len(p.reads), hands_on=len(p.writes))
            out.append(item)
        return out

    def subgraph_info(self) -> list[dict]:
        """Each subgraph replayed from a cond or while_loop: its node and name, whether it runs
        as graphs (else why not), and its graph counts."""
        out = []
        for p in self.subgraphs:
            item = {"node": p.node, "subgraph": p.name, **p.state()}
            if p.graphs is not None:
                item["reads"] = len(p.dynamic)
            out.append(item)
        return out


_CHANGING_SIZES = (
    "its input sizes changed on {n} more calls than it keeps graphs for: capturing cost more "
    "than it saved"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _op(node: Node) -> str:
    """``torch.ops.higher_order.while_loop`` → ``while_loop``."""
    return node.target.rsplit(".", 1)[-1]


def _balanced(nodes) -> bool:
    """Whether these nodes leave every vmap or jvp level they enter, and leave none they did
    not enter."""
    try:
        functorch.check_balanced([n.target for n in nodes], "segment")
    except GraphError:
        return False
    return True


def _aliased_inputs(node: Node) -> list[str]:
    """The values whose memory a node's outputs may share: its arguments the op's schema marks
    with an alias set (``view(Tensor(a) self) -> Tensor(a)``, ``relu_(Tensor(a!) self)``), for
    an op returning an alias; empty for one returning new tensors."""
    schema = registry.schema_of(node.target) if node.target.startswith("torch.ops.") else None
    if schema is None or not any(r.alias_info is not None for r in schema.returns):
        return []
    marked = {a.name for a in schema.arguments if a.alias_info is not None}
    return [r for na in node.inputs if na.name in marked for r in na.arg.refs()]


def _segment_function(
    plan: CompiledGraph, piece: _Piece, fixed: dict[int, Any]
) -> Callable[[Sequence[Any]], list]:
    """The segment as a function of the values it reads: what a graph captures."""
    steps, reads, writes, nslots = piece.steps, piece.reads, piece.writes, plan.nslots
    fixed_items = list(fixed.items())

    def run_segment(values: Sequence[Any]) -> list:
        env = [None] * nslots
        for s, v in fixed_items:
            env[s] = v
        for s, v in zip(reads, values):
            env[s] = v
        plan.run_steps(env, steps)
        return [env[s] for s in writes]

    return run_segment
