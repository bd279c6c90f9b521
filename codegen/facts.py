"""What codegen needs to know about a program's values and state, in one place.

* :class:`StateEntry`: one parameter, buffer or tensor constant, by its state-dict name.
* :class:`ProgramFacts`: which graph value is which state entry, which entries are the same
  tensor (tied weights), which values each node reads and where each is last used.

>>> import pt2interp, importlib.resources as r
>>> facts = ProgramFacts.of(pt2interp.read_program(r.files("pt2interp.examples") / "tiny_mlp.pt2"))
>>> facts.state["fc1.weight"].kind.value, facts.state["fc1.weight"].shape
('parameter', (32, 8))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pt2interp.errors import Pt2Error
from pt2interp.kinds import ArgKind, InputKind
from pt2interp.program import Program, view_key
from pt2interp.schema import Argument, Graph, Node, TensorMeta


@dataclass
class StateEntry:
    """A tensor the module holds: ``target`` is its dotted name (``layer1.0.conv1.weight``)."""

    target: str
    kind: InputKind  # PARAMETER, BUFFER or TENSOR_CONSTANT: the tensor state a module holds
    persistent: bool  # in state_dict(); False for non-persistent buffers and constants
    meta: TensorMeta | None
    requires_grad: bool = True

    @property
    def noun(self) -> str:
        """What messages call it: parameter, buffer or constant."""
        return "constant" if self.kind is InputKind.TENSOR_CONSTANT else self.kind.value

    @property
    def module_path(self) -> str:
        return self.target.rpartition(".")[0]

    @property
    def attr(self) -> str:
        return self.target.rpartition(".")[2]

    @property
    def shape(self) -> tuple | None:
        if self.meta is None or not self.meta.is_static:
            return None
        return tuple(self.meta.sizes)

    @property
    def dtype(self) -> str | None:
        return self.meta.dtype if self.meta is not None else None


def under(path: str, prefix: str) -> bool:
    """True when the dotted ``path`` lies inside module ``prefix`` ("" is the root)."""
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


def relative(path: str, prefix: str) -> str:
    return path if prefix == "" else path[len(prefix) + 1 :]


@dataclass
class ProgramFacts:
    program: Program
    state: dict[str, StateEntry] = field(default_factory=dict)
    value_targets: dict[str, list[str]] = field(default_factory=dict)  # graph value → state names
    tied: dict[str, str] = field(default_factory=dict)  # alias → first name
    last_use: dict[str, int] = field(default_factory=dict)  # value → node index
    defined_at: dict[str, int] = field(default_factory=dict)  # value → node index
    end_uses: list[str] = field(default_factory=list)  # values read after the graph

    @classmethod
    def of(cls, program: Program, *, load_weights: bool = True) -> ProgramFacts:
        facts = cls(program)
        graph = program.graph
        for spec in program.signature.input_specs:
            # script objects are state too, but no tensor a generated module can hold
            if not spec.kind.is_state_tensor or spec.target is None:
                continue
            name = spec.arg.value.name if spec.arg.kind is ArgKind.TENSOR else None
            meta = graph.tensor_values.get(name) if name else None
            persistent = spec.kind is InputKind.PARAMETER or (
                spec.kind is InputKind.BUFFER and spec.persistent is not False
            )
            requires_grad = (
                meta.requires_grad
                if (meta is not None and spec.kind is InputKind.PARAMETER)
                else True
            )
            facts.state.setdefault(
                spec.target, StateEntry(spec.target, spec.kind, persistent, meta, requires_grad)
            )
            if name:
                facts.value_targets.setdefault(name, []).append(spec.target)
        if load_weights:
            facts._add_stored_aliases()
            facts._find_ties()
        facts._index_uses(graph)
        return facts

    def _add_stored_aliases(self) -> None:
        """Tied names the graph signature leaves out but the stored state dict holds (torch 2.5
        to 2.7): the generated module holds them too, so the original state dict loads."""
        for alias, listed in self.program.aliases().items():
            entry = self.state.get(listed)
            if entry is None or alias in self.state:
                continue
            self.state[alias] = StateEntry(
                alias, entry.kind, entry.persistent, entry.meta, entry.requires_grad
            )
            for targets in self.value_targets.values():
                if listed in targets:
                    targets.append(alias)

    # -- tied weights -----------------------------------------------------------------------------
    def _find_ties(self) -> None:
        """Names that are one tensor in the archive (``head.weight = tok_emb.weight``)."""
        import torch

        tensors = {}
        for target in self.state:
            try:
                tensors[target] = self.program.tensor(target)
            except Pt2Error:  # a missing constant: the archive is checked when it runs
                continue
        first_of: dict[tuple, str] = {}
        for target, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.numel() == 0:
                continue
            key = view_key(t)
            if key in first_of:
                self.tied[target] = first_of[key]
            else:
                first_of[key] = target
        # a graph value stands for every name tied to the one it was lifted from
        for value, targets in self.value_targets.items():
            group = set(targets)
            for t in list(group):
                root = self.tied.get(t, t)
                group.add(root)
                group.update(a for a, r in self.tied.items() if r == root)
            self.value_targets[value] = sorted(group, key=list(self.state).index)

    # -- uses ---------------------------------------------------------------------------------
    def _index_uses(self, graph: Graph) -> None:
        for i, node in enumerate(graph.nodes):
            for name in node_reads(node):
                self.last_use[name] = i
            for name in node_defines(node):
                self.defined_at[name] = i
        end = len(graph.nodes)
        sig = self.program.signature
        for _spec, arg in zip(sig.output_specs, graph.outputs):
            for r in arg.refs():
                self.last_use[r] = end
                self.end_uses.append(r)

    def traced_in_training_mode(self) -> bool:
        """True when a batch norm or dropout in the graph ran in training mode (export of a
        module in ``train()``); the generated helpers then leave the module in train mode."""
        for node in self.program.graph.iter_nodes():
            for na in node.inputs:
                if (
                    na.name in ("training", "train")
                    and na.arg.kind is ArgKind.BOOL
                    and na.arg.value
                ):
                    return True
            if "_native_batch_norm_legit_functional" in node.target:
                return True
        return False

    def state_path_in(self, value: str, module_path: str) -> str | None:
        """The dotted path, relative to ``module_path``, by which that module reaches the
        state behind ``value``; None when the value is no state inside it."""
        for target in self.value_targets.get(value, ()):
            if under(target, module_path) and target != module_path:
                return relative(target, module_path)
        return None


def node_reads(node: Node) -> list[str]:
    """Graph values a node reads, subgraph operands included, in argument order."""
    out: list[str] = []
    for na in node.inputs:
        out.extend(na.arg.refs())
    return out


def node_defines(node: Node) -> list[str]:
    out: list[str] = []
    for arg in node.outputs:
        out.extend(output_refs(arg))
    return out


def output_refs(arg: Argument) -> list[str]:
    """The values a node output defines: one value, or a list of tensors."""
    if arg.kind.names_value or arg.kind is ArgKind.TENSORS:
        return arg.refs()
    return []
