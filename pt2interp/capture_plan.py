"""Whether a program can run as a CUDA graph, decided from the graph before anything runs.

A CUDA graph replays the kernels one capture recorded: nothing on the host runs again. So a
node that needs the host between kernels cannot be in one:

* **host syncs**: reading a tensor's value on the CPU (``.item()``, ``_local_scalar_dense``);
* **data-dependent sizes**: an output whose size depends on the data (``nonzero``,
  ``masked_select``, a boolean ``index``, ``unique``): the recorded size has an unbacked symbol
  (``u0``);
* **control flow on data**: ``cond`` on a tensor, ``while_loop`` (its condition is read every
  round);
* **random numbers**: a random op (``rand``, ``bernoulli``, dropout with ``p > 0``, the
  attention kernels with ``dropout_p > 0``); a replay would not continue an eager run's numbers;
* **host objects and effects**: script objects (their methods run on the host) and ops with
  side effects (``with_effects``).

:func:`plan_capture` finds every such node (subgraphs included: a blocker inside a ``map``
body blocks the ``map``) and says ``whole`` (capture the whole program), ``segments`` (capture
the runs of top-level nodes between blockers that launch enough kernels to pay for a replay,
each on its own, and the branches, conditions and bodies of a top-level ``cond`` or
``while_loop`` alike, and run the rest eagerly: :mod:`pt2interp.cuda_segments`) or ``eager``,
with the reasons. Which ops are random or data-dependent is torch's own
classification (the ``nondeterministic_seeded`` and ``data_dependent_output`` tags), written
out here so that describing a program needs no torch; ``tests/test_capture_plan.py`` checks the
tables against the running torch's tags. Ops tagged ``dynamic_output_shape`` (and custom ops
alike) are judged by what export recorded: an unbacked symbol in an output's size.

>>> import importlib.resources as r
>>> from pt2interp.program import read_program
>>> plan = plan_capture(read_program(r.files("pt2interp.examples") / "tiny_mlp.pt2").model)
>>> plan.verdict, plan.reasons
('whole', [])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pt2interp.kinds import ArgKind, InputKind
from pt2interp.schema import Argument, ExportedProgramModel, Graph, Node, SymExpr

__all__ = ["MIN_SEGMENT_NODES", "Blocker", "CapturePlan", "kernel_launches", "plan_capture"]

# ops whose value is read on the host (torch tag: data_dependent_output)
HOST_SYNC_OPS = frozenset({"aten._local_scalar_dense", "aten.allclose", "aten.equal", "aten.item"})

# ops that always draw random numbers (torch tag: nondeterministic_seeded)
RANDOM_OPS = frozenset(
    {
        "aten._fill_mem_eff_dropout_mask_",
        "aten._nested_tensor_softmax_with_shape",
        "aten._sample_dirichlet",
        "aten._standard_gamma",
        "aten.bernoulli",
        "aten.bernoulli_",
        "aten.binomial",
        "aten.cauchy",
        "aten.cauchy_",
        "aten.exponential",
        "aten.exponential_",
        "aten.geometric",
        "aten.geometric_",
        "aten.log_normal",
        "aten.log_normal_",
        "aten.multinomial",
        "aten.normal",
        "aten.normal_",
        "aten.normal_functional",
        "aten.poisson",
        "aten.rand",
        "aten.rand_like",
        "aten.random",
        "aten.random_",
        "aten.randint",
        "aten.randint_like",
        "aten.randn",
        "aten.randn_like",
        "aten.randperm",
        "aten.uniform",
        "aten.uniform_",
    }
)

# ops tagged nondeterministic_seeded that draw numbers only for dropout or training: op →
# (the probability argument, the training flag), either None where the op has none
RANDOM_WHEN = {
    "aten._fused_dropout": ("p", None),
    "aten.native_dropout": ("p", "train"),
    "aten.dropout": ("p", "train"),
    "aten.dropout_": ("p", "train"),
    "aten.alpha_dropout": ("p", "train"),
    "aten.alpha_dropout_": ("p", "train"),
    "aten.feature_dropout": ("p", "train"),
    "aten.feature_dropout_": ("p", "train"),
    "aten.feature_alpha_dropout": ("p", "train"),
    "aten.feature_alpha_dropout_": ("p", "train"),
    "aten._cudnn_init_dropout_state": ("dropout", "train"),
    "aten.scaled_dot_product_attention": ("dropout_p", None),
    "aten._scaled_dot_product_attention_math": ("dropout_p", None),
    "aten._fused_sdp_choice": ("dropout_p", None),
    "aten._triton_scaled_dot_attention": ("dropout_p", None),
    "aten._cudnn_attention_forward": ("dropout_p", None),
    "aten._cudnn_attention_backward": ("dropout_p", None),
    "aten._scaled_dot_product_flash_attention": ("dropout_p", None),
    "aten._scaled_dot_product_flash_attention_for_cpu": ("dropout_p", None),
    "aten._scaled_dot_product_efficient_attention": ("dropout_p", None),
    "aten._scaled_dot_product_cudnn_attention": ("dropout_p", None),
    "aten._scaled_dot_product_fused_attention_overrideable": ("dropout_p", None),
    "aten._scaled_dot_product_attention_math_for_mps": ("dropout_p", None),
    "aten._efficient_attention_forward": ("dropout_p", None),
    "aten._flash_attention_forward": ("dropout_p", None),
    "aten._flash_attention_forward_no_dropout_inplace": (None, None),
    "aten._cudnn_attention_forward_no_dropout_inplace": (None, None),  # torch 2.15
    "aten._scaled_dot_product_cudnn_attention_backward": ("dropout_p", None),
    "aten._scaled_dot_product_efficient_attention_backward": ("dropout_p", None),
    "aten.lstm": ("dropout", "train"),
    "aten.gru": ("dropout", "train"),
    "aten.rnn_tanh": ("dropout", "train"),
    "aten.rnn_relu": ("dropout", "train"),
    "aten._cudnn_rnn": ("dropout", "train"),
    "aten.miopen_rnn": ("dropout", "train"),
    "aten._lstm_mps": ("dropout", "train"),
    "aten.rrelu": (None, "training"),
    "aten.rrelu_": (None, "training"),
    "aten.rrelu_with_noise": (None, "training"),
    "aten.rrelu_with_noise_": (None, "training"),
    "aten.rrelu_with_noise_functional": (None, "training"),
}

_EFFECT_OPS = frozenset({"higher_order.with_effects"})

# control flow whose choice or loop runs on the host, but whose subgraphs (a branch, a loop's
# condition or body) can each be a graph, replayed from the op as it runs eagerly
_SUBGRAPH_CAPTURING_OPS = frozenset({"higher_order.cond", "higher_order.while_loop"})

# ops on sizes and checks of them, which run on the host without touching the device
_HOST_VALUE_OPS = frozenset(
    {
        "aten.sym_size",
        "aten.sym_stride",
        "aten.sym_numel",
        "aten.sym_storage_offset",
        "aten._assert_scalar",
        "aten.sym_constrain_range",
        "aten.sym_constrain_range_for_size",
        "aten._assert_tensor_metadata",
    }
)

# The fewest kernel launches worth a graph of their own: a segment's replay adds a copy for
# each value it reads from the eager part and a clone for each it hands back, each about one
# eager launch, so short runs between blockers gain little. Unmeasured on a GPU so far:
# ``python -m benchmarks.cuda_segments`` times eager against segments to tune it.
MIN_SEGMENT_NODES = 8

_UNBACKED = re.compile(r"^u\d+$")


@dataclass(frozen=True)
class Blocker:
    """A node a CUDA graph cannot hold: where it is, its target, and why."""

    where: str  # graph.nodes[4] (nonzero); subgraphs: graph.nodes[2] (map_impl) > body_graph_0...
    target: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


@dataclass(frozen=True)
class CapturePlan:
    """``verdict``: ``whole`` (the program can be one CUDA graph), ``segments`` (the runs of
    nodes between blockers that are long enough are captured, each as graphs of its own, and the
    rest runs eagerly) or ``eager``; ``blockers`` say why not whole. ``segments`` are the
    ``[start, end)`` runs of top-level node indices between blockers (with at least one node),
    each of which a graph could hold; ``captured`` those of them with at least
    ``min_segment_nodes`` kernel launches (shorter ones save less than a replay costs)."""

    verdict: str
    blockers: tuple[Blocker, ...] = ()
    segments: tuple[tuple[int, int], ...] = field(default=())
    captured: tuple[tuple[int, int], ...] = field(default=())
    min_segment_nodes: int = MIN_SEGMENT_NODES
    # (node index, subgraph name): a top-level cond or while_loop's branch, condition or body
    # that is captured on its own (the op itself runs eagerly and replays it)
    captured_subgraphs: tuple[tuple[int, str], ...] = field(default=())

    @property
    def reasons(self) -> list[str]:
        return [str(b) for b in self.blockers]

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "segments": [list(s) for s in self.segments],
            "captured_segments": [list(s) for s in self.captured],
            "captured_subgraphs": [list(s) for s in self.captured_subgraphs],
            "min_segment_nodes": self.min_segment_nodes,
        }


def plan_capture(
    model: ExportedProgramModel, *, min_segment_nodes: int = MIN_SEGMENT_NODES
) -> CapturePlan:
    """The capture plan of a whole program (read with arguments: not an outline).
    ``min_segment_nodes``: the fewest kernel launches (nodes but getitem and size reads) a run
    between blockers needs to be captured on its own."""
    if model.graph.outline:
        raise ValueError("plan_capture needs the nodes' arguments: read the program whole")
    if min_segment_nodes < 1:
        raise ValueError(f"min_segment_nodes must be at least 1, not {min_segment_nodes}")
    blockers: list[Blocker] = []
    for spec in model.signature.input_specs:
        if spec.kind is InputKind.CUSTOM_OBJ:
            blockers.append(
                Blocker(
                    f"input {spec.target}",
                    spec.arg.value.class_fqn if spec.arg.kind is ArgKind.CUSTOM_OBJ else "",
                    "a script object: its methods run on the host",
                )
            )
    blocked_at: list[int] = []
    for i, node in enumerate(model.graph.nodes):
        found = _node_blockers(node, model.graph, f"graph.nodes[{i}] ({node.label})")
        if found:
            blocked_at.append(i)
            blockers.extend(found)
    segments, start = [], 0
    for i in [*blocked_at, len(model.graph.nodes)]:
        if i > start:
            segments.append((start, i))
        start = i + 1
    nodes = model.graph.nodes
    if not blockers:
        return CapturePlan("whole", (), tuple(segments), tuple(segments), min_segment_nodes)
    captured = tuple(
        (a, b) for a, b in segments if kernel_launches(nodes[a:b]) >= min_segment_nodes
    )
    subgraphs = tuple(
        (i, sub.name)
        for i in blocked_at
        if _op_name(nodes[i].target) in _SUBGRAPH_CAPTURING_OPS
        for sub in _subgraphs(nodes[i])
        if kernel_launches(sub.graph.nodes) >= min_segment_nodes
        and not any(_node_blockers(n, sub.graph, "") for n in sub.graph.nodes)
    )
    return CapturePlan(
        "segments" if captured or subgraphs else "eager",
        tuple(blockers),
        tuple(segments),
        captured,
        min_segment_nodes,
        subgraphs,
    )


def _subgraphs(node: Node) -> list:
    return [na.arg.value for na in node.inputs if na.arg.kind is ArgKind.GRAPH]


def kernel_launches(nodes) -> int:
    """How many of these nodes launch work on the device: torch ops but those reading or
    checking sizes (``getitem`` and Python arithmetic on sizes are no torch ops)."""
    return sum(
        1
        for n in nodes
        if n.target.startswith("torch.ops.") and _op_name(n.target) not in _HOST_VALUE_OPS
    )


def _node_blockers(node: Node, graph: Graph, where: str) -> list[Blocker]:
    op = _op_name(node.target)
    why = _why_blocked(node, graph, op)
    found = [Blocker(where, node.target, why)] if why else []
    for sub in _subgraphs(node):
        for j, inner in enumerate(sub.graph.nodes):
            found.extend(
                _node_blockers(inner, sub.graph, f"{where} > {sub.name}.nodes[{j}] ({inner.label})")
            )
    return found


def _why_blocked(node: Node, graph: Graph, op: str) -> str | None:
    if op in HOST_SYNC_OPS:
        return "reads a tensor's value on the host (a sync)"
    if op == "higher_order.while_loop":
        return "while_loop: its condition is read on the host every round"
    if op == "higher_order.cond":
        predicate = node.inputs[0].arg if node.inputs else None
        if predicate is not None and predicate.kind is ArgKind.TENSOR:
            return "cond on a tensor: the branch is chosen on the host"
    if op in _EFFECT_OPS:
        return "an op with side effects"
    if op in RANDOM_OPS:
        return "draws random numbers (a replay would not continue an eager run's numbers)"
    if op in RANDOM_WHEN and _draws_random(node, *RANDOM_WHEN[op]):
        return "dropout: draws random numbers (a replay would not continue an eager run's)"
    unbacked = _unbacked_sizes(node, graph)
    if unbacked:
        return f"output size depends on the data ({', '.join(sorted(unbacked))})"
    return None


def _op_name(target: str) -> str:
    """``torch.ops.aten.add.Tensor`` → ``aten.add``; ``torch.ops.higher_order.cond`` →
    ``higher_order.cond``."""
    parts = target.removeprefix("torch.ops.").split(".")
    if parts[0] == "higher_order":
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if len(parts) >= 2 else target


def _draws_random(node: Node, p_name: str | None, train_name: str | None) -> bool:
    args = {na.name: na.arg for na in node.inputs}
    train = args.get(train_name) if train_name is not None else None
    if train is not None and _is_false(train):
        return False  # not training: nothing drawn, whatever the probability
    if p_name is None:  # only the flag decides (rrelu_with_noise; its default is False)
        return train is not None
    return _nonzero(args.get(p_name))


def _is_false(arg: Argument) -> bool:
    return arg.kind is ArgKind.BOOL and arg.value is False


def _nonzero(arg: Argument | None) -> bool:
    """A probability argument that is (or may be) above zero; absent means its default, 0."""
    if arg is None:
        return False
    if arg.kind in (ArgKind.FLOAT, ArgKind.INT):
        return arg.value != 0
    return True  # symbolic or unknown: assume it draws


def _unbacked_sizes(node: Node, graph: Graph) -> set[str]:
    """The unbacked symbols this node introduces: in its outputs' sizes, not its inputs'
    (a ``sym_size`` of ``nonzero``'s output only passes ``u0`` on)."""
    made = _unbacked_in(graph, [r for out in node.outputs for r in out.refs()])
    if made:
        made -= _unbacked_in(graph, [r for na in node.inputs for r in na.arg.refs()])
    return made


def _unbacked_in(graph: Graph, refs: list[str]) -> set[str]:
    found: set[str] = set()
    for ref in refs:
        meta = graph.tensor_values.get(ref)
        sizes = meta.sizes if meta is not None else ()
        sym = graph.sym_int_values.get(ref)
        for size in (*sizes, *((sym,) if sym is not None else ())):
            if isinstance(size, SymExpr):
                found.update(s for s in size.expr.symbols() if _UNBACKED.match(s))
    return found
