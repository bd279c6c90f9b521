"""A program ready to run: weights on a device, the graph compiled, inputs checked.

>>> import torch, pt2interp, importlib.resources as r
>>> prog = pt2interp.load(r.files("pt2interp.examples") / "tiny_mlp.pt2")
>>> prog(torch.zeros(2, 8)).shape
torch.Size([2, 16])
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from pt2interp import cuda_graphs as cuda_graphs_mod
from pt2interp import limits
from pt2interp.capture_plan import CapturePlan, plan_capture
from pt2interp.cuda_segments import SegmentedRun
from pt2interp.errors import DeviceError, ExecutionError, Pt2Error, SchemaError
from pt2interp.interpreter import CompiledGraph, GraphCompiler, written_values
from pt2interp.kinds import STATE_INPUT_KINDS, ArgKind, InputKind, OutputKind
from pt2interp.ops import functorch
from pt2interp.program import Program
from pt2interp.signature import CallSignature


class LoadedProgram:
    """Call it like the exported module: ``prog(*args, **kwargs)``.

    Outputs come back in the original structure; buffers the graph mutates advance from call to
    call, as with ``ep.module()``. Runs under ``torch.inference_mode()`` (``torch.no_grad()`` for
    a program that uses forward-mode AD, which inference mode turns off) unless
    ``inference_mode=False``.
    """

    def __init__(
        self,
        program: Program,
        device: str | torch.device | None = None,
        *,
        inference_mode: bool = True,
        cuda_graphs: bool = False,
        max_cuda_graphs: int = cuda_graphs_mod.DEFAULT_MAX_GRAPHS,
        reuse_outputs: bool = False,
    ):
        self.program = program
        self.inference_mode = inference_mode
        self.cuda_graphs = cuda_graphs
        self._graph_options = {"max_graphs": max_cuda_graphs, "reuse_outputs": reuse_outputs}
        self._graphs: cuda_graphs_mod.GraphCache | None = None
        self._segments: SegmentedRun | None = None
        self._recorder = None
        self._device = _usable_device(device) if device is not None else None
        self._state: dict[str, Any] = {}
        values = program.graph.tensor_values
        for spec in program.signature.input_specs:
            if spec.kind in STATE_INPUT_KINDS:
                value = program.tensor(spec.target)
                meta = values.get(spec.arg.value.name) if spec.arg.kind is ArgKind.TENSOR else None
                if (
                    spec.kind == InputKind.PARAMETER
                    and meta is not None
                    and meta.requires_grad
                    and isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                ):
                    # Kernels pick their path by requires_grad (matmul folding in linear, the RNN
                    # fast paths): parameters keep it as exported so results match ep.module()
                    # bit for bit. Inference mode still records no autograd graph.
                    value = value.detach().requires_grad_(True)
                self._state[spec.target] = value
        if self._device is not None:
            self._move_state(self._device)
        self._build()

    # -- set-up --------------------------------------------------------------------------------
    def _build(self) -> None:
        model = self.program.model
        member = self.program.source
        # the program's device, not the file's: factory ops recorded with device=cuda make
        # their tensors on CPU when the program runs there, and the other way round
        self._plan: CompiledGraph = self._compile()
        self.signature = signature = CallSignature.from_model(model, strict=True, member=member)
        # inference mode turns forward-mode AD off (torch.func.jvp's tangents become None before
        # torch 2.13): a program recording a jvp runs under no_grad, which records no graph either
        self._no_autograd = (
            torch.no_grad if functorch.uses_forward_ad(model.graph) else torch.inference_mode
        )
        specs = model.signature.input_specs
        self._template: list[Any] = [None] * len(specs)
        for i, s in enumerate(specs):
            if s.kind in STATE_INPUT_KINDS:
                self._template[i] = self._state[s.target]
            elif s.kind == InputKind.TOKEN:
                self._template[i] = torch.empty(0)
            elif s.kind == InputKind.CONSTANT_INPUT:
                self._template[i] = s.constant_value
        self._input_slots = [leaf.graph_index for leaf in signature.inputs]
        self._output_slots = [leaf.graph_index for leaf in signature.outputs]
        outs = model.signature.output_specs
        self._buffer_writes = [
            (i, s.target)
            for i, s in enumerate(outs)
            if s.kind in (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION)
        ]
        for i, target in self._buffer_writes:
            if target not in self._state:
                raise SchemaError(
                    f"{outs[i].kind} names {target!r}, which is no parameter or buffer",
                    member=member,
                    path=f"graph_module.signature.output_specs[{i}]",
                )
        user_input_pos = {
            leaf.spec.arg.value.name: n
            for n, leaf in enumerate(signature.inputs)
            if leaf.spec.kind == InputKind.USER_INPUT and leaf.spec.arg.kind is ArgKind.TENSOR
        }
        self._input_writes = []
        for i, s in enumerate(outs):
            if s.kind == OutputKind.USER_INPUT_MUTATION:
                if s.target not in user_input_pos:
                    raise SchemaError(
                        f"user_input_mutation names {s.target!r}, which is no user input",
                        member=member,
                        path=f"graph_module.signature.output_specs[{i}]",
                    )
                self._input_writes.append((i, user_input_pos[s.target]))
        self._graphs = self._segments = None
        self._graphs_failed = ""
        if self.cuda_graphs:
            self._start_graphs(self._chosen_recorder)

    def _compile(self) -> CompiledGraph:
        return GraphCompiler(device=self.device, member=self.program.source).compile(
            self.program.model.graph
        )

    @functools.cached_property
    def capture_plan(self) -> CapturePlan:
        """Whether this program can run as CUDA graphs, and if not which nodes prevent it
        (decided from the graph; see :mod:`pt2interp.capture_plan`)."""
        return plan_capture(self.program.model)

    def _start_graphs(self, recorder=None) -> None:
        """Run calls as captured graphs from now on (``recorder``: how to capture; the CUDA
        one by default, which needs the program on a CUDA device): the whole program as one
        graph, or the plan's segments as graphs of their own between nodes run eagerly."""
        self.cuda_graphs = True
        self._chosen_recorder = recorder
        plan = self.capture_plan
        if plan.verdict == "eager":
            if not self._warned_eager:
                self._warned_eager = True
                warnings.warn(
                    f"{self.program.source}: runs eagerly, not as CUDA graphs: "
                    + "; ".join(plan.reasons[:3])
                    + (f" (and {len(plan.reasons) - 3} more)" if len(plan.reasons) > 3 else ""),
                    stacklevel=3,
                )
            return
        if recorder is None:
            recorder = self._cuda_recorder()
        if plan.verdict == "segments":
            user_slots = set(self._input_slots)
            fixed = {i: v for i, v in enumerate(self._template) if i not in user_slots}
            # subgraphs replayed from their op are set up in a plan of their own: eager and
            # hooked runs keep running them as they are
            compiled = self._compile() if plan.captured_subgraphs else self._plan
            self._segments = SegmentedRun(
                compiled, plan, fixed, recorder, max_graphs=self._graph_options["max_graphs"]
            )
            return
        state, inputs = self._written_by_a_run()
        self._graphs = cuda_graphs_mod.GraphCache(
            lambda leaves: self._eager(leaves, leaves),
            recorder,
            mutable_state=[self._state[t] for t in sorted(state)],
            mutated_inputs=sorted(inputs),
            **self._graph_options,
        )

    def _written_by_a_run(self) -> tuple[set[str], set[int]]:
        """The parameters/buffers (by name) and user inputs (by position) a run writes: those
        named by mutation outputs (core IR), and those in-place ops write into (training IR
        keeps ``add_`` on a buffer or input)."""
        written = written_values(self.program.model.graph)
        specs = self.program.model.signature.input_specs
        state = {t for _, t in self._buffer_writes} | {
            s.target for s in specs if s.kind in STATE_INPUT_KINDS and _names(s.arg) & written
        }
        inputs = {pos for _, pos in self._input_writes} | {
            n for n, leaf in enumerate(self.signature.inputs) if _names(leaf.spec.arg) & written
        }
        return state, inputs

    def _graph_failure(self, exc: Exception) -> None:
        """A capture or replay failed: run eagerly from now on, and say why."""
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        self._graphs_failed = f"{type(exc).__name__}: {first}"
        self._graphs = None
        warnings.warn(
            f"{self.program.source}: capturing a CUDA graph failed ({self._graphs_failed}); "
            "runs eagerly from now on",
            stacklevel=4,
        )

    def _cuda_recorder(self):
        if self.device.type != "cuda":
            raise DeviceError(
                f"CUDA graphs need the program on a CUDA device; it runs on {self.device} "
                "(load it with device='cuda')"
            )
        if self._recorder is None or self._recorder.device != self.device:
            self._recorder = cuda_graphs_mod.CudaRecorder(self.device)
        return self._recorder

    _warned_eager = False
    _chosen_recorder = None

    def adopt_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Run with these tensors for the named parameters/buffers from now on (the module
        wrapper calls this after ``.to()`` or ``load_state_dict`` replaced its tensors)."""
        self._state.update(tensors)
        devices = {t.device for t in tensors.values() if isinstance(t, torch.Tensor)}
        if len(devices) == 1 and (self._device or torch.device("cpu")) != next(iter(devices)):
            self._device = next(iter(devices))
        self._build()

    def _move_state(self, device: torch.device) -> None:
        for k, v in self._state.items():
            if isinstance(v, torch.Tensor):
                self._state[k] = v.to(device)

    # -- public --------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[tuple[str, bool]]:
        """``(name, is_keyword)`` of each input value, in order: the names ``pt2interp info``
        prints (``x``, ``scale``, ``xs.0``)."""
        return list(self.signature.input_names)

    @property
    def output_names(self) -> list[str]:
        """``out``, ``out.0``, ``out.sum``, ...: each output value, as ``info`` and the server
        name them."""
        return list(self.signature.output_names)

    def named_outputs(self, outputs: Any) -> dict[str, Any]:
        """A call's outputs by :attr:`output_names` (``{"out.sum": ..., "out.pair.0": ...}``)."""
        return self.signature.named_outputs(outputs)

    def bind_named(self, values: dict[str, Any]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for a call from values keyed by input name (:attr:`input_names`)
        or by position among them (``in_0``, ``in_1``, ...), as ``pt2interp run --inputs`` reads
        them. An input given twice, missing or unknown is an :class:`InputMismatchError` listing the
        expected names."""
        return self.signature.unbind(self.signature.bind_named(values))

    @property
    def device(self) -> torch.device:
        """Where weights live and computation runs."""
        if self._device is not None:
            return self._device
        for v in self._state.values():
            if isinstance(v, torch.Tensor):
                return v.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> LoadedProgram:
        """Move weights and constants to ``device`` (in place) and return self."""
        self._device = _usable_device(device)
        self._move_state(self._device)
        self._build()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current parameters and persistent buffers (mutated buffers included)."""
        return {
            s.target: self._state[s.target]
            for s in self.program.signature.input_specs
            if s.kind == InputKind.PARAMETER
            or (s.kind == InputKind.BUFFER and s.persistent is not False)
        }

    def fallback_ops(self) -> list[str]:
        """Targets in this program that run through the generic ``torch.ops`` fallback."""
        return sorted(self._plan.fallback_targets())

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)

    def run(self, *args, on_node: Callable[[str, str, Any], None] | None = None, **kwargs):
        """Run the program. ``on_node(name, target, value)``, if given, sees every value."""
        signature = self.signature
        leaves = signature.bind(args, kwargs)
        return signature.build_output(
            self._execute(signature.check(leaves, self.device), leaves, on_node)
        )

    def run_leaves(self, leaves: list[Any], *, checked: bool = False) -> list[Any]:
        """Run on input leaves (one value per :attr:`input_names`, constant inputs included) and
        return the output leaves (one per :attr:`output_names`): the call without its structure.
        The inputs are checked as a call's are, unless ``checked`` says the caller has done so
        already with ``self.signature.check(leaves, self.device)`` (the server, which checks each
        request as it takes it)."""
        if checked:
            return self._execute(leaves, leaves)
        return self._execute(self.signature.check(leaves, self.device), leaves)

    def _execute(
        self,
        checked: list[Any],
        given: list[Any],
        on_node: Callable[[str, str, Any], None] | None = None,
    ) -> list[Any]:
        """The output leaves of a run on ``checked`` leaves (on this device already); inputs the
        graph mutates are written back to ``given``. A hooked run is always eager (a replay has
        no values to show), and so is one that records autograd (``inference_mode=False`` with
        grad enabled: a replay builds no autograd graph)."""
        with self._calling():
            replayable = on_node is None and (self.inference_mode or not torch.is_grad_enabled())
            if self._graphs is not None and replayable:
                try:
                    return self._graphs.run(checked, given)
                except Pt2Error:
                    raise  # a node failed, as it would have eagerly
                except Exception as exc:  # the capture itself (an op the plan did not foresee)
                    self._graph_failure(exc)
            if self._segments is not None and replayable:
                return self._eager(checked, given, run=self._segments.run)
            return self._eager(checked, given, on_node)

    @contextlib.contextmanager
    def _calling(self):
        """What every run (and capture) is under: the call budget and the autograd mode."""
        with limits.call_budget():
            with self._no_autograd() if self.inference_mode else contextlib.nullcontext():
                yield

    def _eager(
        self,
        checked: list[Any],
        given: list[Any],
        on_node: Callable[[str, str, Any], None] | None = None,
        run: Callable[[list], list] | None = None,
    ) -> list[Any]:
        inputs = list(self._template)
        for slot, value in zip(self._input_slots, checked):
            inputs[slot] = value
        if on_node is not None:
            flat = self._plan.run_hooked(inputs, on_node)
        else:
            flat = (run or self._plan.run)(inputs)
        self._write_back(flat, given)
        return [flat[i] for i in self._output_slots]

    def capture(self, *args, **kwargs) -> bool:
        """Capture the CUDA graph for this call's input signature now, so that no call captures
        on the hot path (a server does this for each batch size at start-up). Returns False
        if that signature was captured already, or if the program runs eagerly (see
        :attr:`capture_plan`); buffers keep their values."""
        return self.capture_leaves(self.signature.bind(args, kwargs))

    def capture_leaves(self, leaves: list[Any]) -> bool:
        """:meth:`capture` for input leaves (one per :attr:`input_names`), as a server has
        them."""
        if not self.cuda_graphs:
            raise ValueError("capture() needs a program loaded with cuda_graphs=True")
        checked = self.signature.check(leaves, self.device)
        if self._graphs is not None:
            with self._calling():
                try:
                    return self._graphs.capture(checked)
                except Pt2Error:
                    raise
                except Exception as exc:
                    self._graph_failure(exc)
                    return False
        if self._segments is None:
            return False
        # the segments are captured while the program runs once eagerly (a segment's inputs come
        # from the eager nodes before it), on copies of the inputs, with the state put back after
        state, _ = self._written_by_a_run()
        saved = {t: self._state[t].detach().clone() for t in sorted(state)}
        copies = [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in checked]
        before = self._segments.captures()
        try:
            with self._calling():
                self._eager(
                    copies, copies, run=functools.partial(self._segments.run, capture_only=True)
                )
        finally:
            with torch.no_grad():  # a parameter the program writes is a leaf that needs grad
                for t, value in saved.items():
                    self._state[t].copy_(value)
        return self._segments.captures() > before

    def cuda_graphs_info(self) -> dict:
        """The capture plan's verdict and, when graphs run, how many are held, captured and
        replayed."""
        info = {"enabled": self.cuda_graphs, **self.capture_plan.to_dict()}
        if self._graphs_failed:
            info["failed"] = self._graphs_failed
        if self._graphs is not None:
            info.update(self._graphs.info())
        elif self._segments is not None:
            pieces = self._segments.info()
            subgraphs = self._segments.subgraph_info()
            captured = [p for p in (*pieces, *subgraphs) if p["runs"] == "graphs"]
            info.update(
                graphs=sum(p["graphs"] for p in captured),
                max_graphs=self._segments.max_graphs,
                captures=self._segments.captures(),
                replays=sum(p["replays"] for p in captured),
                pieces=pieces,
                subgraphs=subgraphs,
            )
        return info

    def module(self) -> torch.nn.Module:
        """A ``torch.nn.Module`` running this program, weights registered under their original
        names (so ``state_dict()``, ``.to()`` and ``load_state_dict()`` work as on the original)."""
        from pt2interp.module import ProgramModule

        return ProgramModule(self)

    def _write_back(self, flat: list, user_leaves: list) -> None:
        i = target = None
        try:
            for i, target in self._buffer_writes:
                buf = self._state[target]
                value = flat[i]
                if buf is not value:
                    buf.copy_(value)
            for i, pos in self._input_writes:
                target = f"input {self.signature.label(pos)}"
                dst = user_leaves[pos]
                if dst is not flat[i]:
                    dst.copy_(flat[i])
        except Exception as exc:  # the graph's new value does not fit what it mutates
            raise ExecutionError(
                f"{self.program.source}: graph_module.signature.output_specs[{i}]: cannot write "
                f"the new value of {target!r} back ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''})"
            ) from exc

    def __repr__(self) -> str:
        return f"<LoadedProgram {self.program.source!r} device={self.device}>"


def _usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` with its index where it has one (``cuda`` is the
    current CUDA device now, ``cuda:0``, as ``nn.Module.to("cuda")`` moves to it), refusing one
    this torch or machine does not have (a CPU-only torch asked for ``cuda`` raises an
    AssertionError deep inside otherwise). With the index, tensors made later (factory ops, a
    graph capture) land where the weights are even if another device has become current, and
    inputs already there compare equal to it."""
    try:
        return torch.empty(0, device=torch.device(device)).device
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeviceError(f"device {str(device)!r} is not available: {first}") from None


def _names(arg) -> set[str]:
    return set(arg.refs())
