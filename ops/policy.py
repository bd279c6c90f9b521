"""Which ops may run on archive data: refused, checked first, replaced, or allowed (and why).

A ``.pt2`` names its ops, so a hostile one can name any op torch has. Most are safe on any
arguments: ATen checks shapes, indices and storage bounds. A few trust their caller instead
(unchecked sparse constructors, CTC targets), touch files or global state, or format text;
this table says what pt2interp does with each. The interpreter consults it for every node,
those that run through the generic ``torch.ops`` fallback included, and for ops that reach a
kernel as an argument (``with_effects``, ``auto_functionalized``).

* ``refuse``: loading a program that names the op raises
  :class:`~pt2interp.errors.UnsupportedOpError` with the reason.
* ``check``: ``check(args)`` runs on the named arguments before every call and raises
  ``ValueError`` naming the bad one, which the interpreter reports with the node.
* ``replace``: ``kernel`` runs instead of the op (same arguments, a safe equivalent).
* ``allow``: runs as it is; ``reason`` says why that is safe (tests check each claim).

Rules are keyed by ``namespace::name`` and cover every overload. Beyond them: every ATen
overload that returns a ``str`` is refused (export never emits string ops, and archive text
is never formatted or grown), whole namespaces are refused where they are compiler or
process internals, and higher-order ops run only from :data:`HIGHER_ORDER_ALLOWED`.

>>> rule_for("aten", "_sparse_coo_tensor_unsafe").verdict
'check'
>>> rule_for("aten", "set_").verdict
'refuse'
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pt2interp.printable import printable

__all__ = [
    "HIGHER_ORDER_ALLOWED",
    "REFUSED_NAMESPACES",
    "RULES",
    "Rule",
    "guard",
    "guard_op",
    "guard_target",
    "passes_unguarded",
    "refusal",
    "rule_for",
]


@dataclass(frozen=True)
class Rule:
    verdict: str  # refuse | check | replace | allow
    reason: str
    check: Callable[[dict[str, Any]], None] | None = None
    kernel: Callable | None = None


# -- checks: each takes the call's arguments by schema name and raises ValueError ----------------


def _nonempty(t) -> bool:
    return t is not None and t.numel() > 0


def _require_size(args: dict, what: str):
    size = args.get("size")
    if size is None:
        raise ValueError(f"{what} without an explicit size cannot be checked before it is built")
    return size


def _check_coo(args: dict) -> None:
    import torch

    torch._validate_sparse_coo_tensor_args(
        args["indices"], args["values"], _require_size(args, "a sparse COO tensor")
    )


def _compressed(validator: str, compressed: str, plain: str) -> Callable[[dict], None]:
    def check(args: dict) -> None:
        import torch

        size = _require_size(args, "a sparse compressed tensor")
        getattr(torch, validator)(args[compressed], args[plain], args["values"], size)

    return check


def _check_compressed_any(args: dict) -> None:
    import torch

    layout = args.get("layout")
    if layout is None:
        raise ValueError("a sparse compressed tensor without a layout")
    torch._validate_sparse_compressed_tensor_args(
        args["compressed_indices"],
        args["plain_indices"],
        args["values"],
        _require_size(args, "a sparse compressed tensor"),
        layout,
    )


def _check_ctc_targets(args: dict) -> None:
    # the CTC kernels index log_probs with every target unchecked: out of range reads memory
    targets, log_probs = args.get("targets"), args.get("log_probs")
    if _nonempty(targets) and log_probs is not None:
        classes = log_probs.size(-1)
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= classes:
            raise ValueError(
                f"CTC targets must lie in [0, {classes}), got values from {low} to {high}"
            )


def _print_text(args: dict) -> None:
    sys.stdout.write(printable(str(args.get("s", "")), keep_newlines=True) + "\n")


# -- the table -----------------------------------------------------------------------------------


def _refuse(reason: str) -> Rule:
    return Rule("refuse", reason)


def _allow(reason: str) -> Rule:
    return Rule("allow", reason)


_SPARSE_CHECKED = (
    "builds a sparse tensor from index data it does not check; checked as torch's validators check"
)
_ALIASING = (
    "returns an alias of a sparse tensor's own index or value storage, whose mutation would "
    "corrupt it: a copy is returned instead"
)
_UNSAFE_ONLY_FOR_AUTOGRAD = (
    "'unsafe' only skips autograd's view tracking; sizes are checked as for the safe op"
)

RULES: dict[str, Rule] = {
    # files, global state, raw storage
    "aten::from_file": _refuse("reads a file the graph names (and with shared=True writes to it)"),
    "aten::save": _refuse("writes a file the graph names"),
    "aten::set": _refuse("points a tensor at any storage, offset and sizes, unchecked"),
    "aten::set_": _refuse("points a tensor at any storage, offset and sizes, unchecked"),
    "aten::set_data": _refuse("swaps a tensor's data for another's, bypassing every check"),
    "aten::_copy_from": _refuse(
        "a backend hook of copy_ that skips its checks; export never emits it"
    ),
    "aten::_copy_from_and_resize": _refuse(
        "a backend hook of copy_ that skips its checks; export never emits it"
    ),
    "aten::_reshape_alias": _refuse("builds views without checking its bounds"),
    "aten::_cufft_set_plan_cache_max_size": _refuse("changes process-wide state"),
    "aten::set_grad_enabled": _refuse(
        "changes the caller's autograd state; export records grad regions otherwise"
    ),
    "aten::_set_item": _refuse("a TorchScript list mutation; export never emits it"),
    "prims::_unsafe_set_version_counter": _refuse(
        "changes autograd's bookkeeping of tensors; export never emits it"
    ),
    "prims::_unsafe_index_put_": _refuse(
        "an inductor-internal prim that skips index checks; export never emits it"
    ),
    # sparse tensors: constructors checked, invariant-breaking mutators refused, aliases copied
    "aten::_sparse_coo_tensor_unsafe": Rule("check", _SPARSE_CHECKED, check=_check_coo),
    "aten::sparse_coo_tensor": Rule("check", _SPARSE_CHECKED, check=_check_coo),
    "aten::_sparse_coo_tensor_with_dims_and_tensors": Rule(
        "check", _SPARSE_CHECKED, check=_check_coo
    ),
    "aten::_sparse_compressed_tensor_unsafe": Rule(
        "check", _SPARSE_CHECKED, check=_check_compressed_any
    ),
    "aten::sparse_compressed_tensor": Rule("check", _SPARSE_CHECKED, check=_check_compressed_any),
    "aten::_coalesced_": _refuse("marks a sparse tensor coalesced without checking that it is"),
    "aten::sparse_resize_": _refuse("resizes a sparse tensor's index space in place, unchecked"),
    "aten::sparse_resize_and_clear_": _refuse(
        "resizes a sparse tensor's index space in place, unchecked"
    ),
    "aten::_indices": Rule("replace", _ALIASING),
    "aten::_values": Rule("replace", _ALIASING),
    "aten::indices": Rule("replace", _ALIASING),
    "aten::values": Rule("replace", _ALIASING),
    "aten::crow_indices": Rule("replace", _ALIASING),
    "aten::col_indices": Rule("replace", _ALIASING),
    "aten::ccol_indices": Rule("replace", _ALIASING),
    "aten::row_indices": Rule("replace", _ALIASING),
    # kernels that index with their arguments unchecked
    "aten::_ctc_loss": Rule(
        "check", "indexes log_probs with each target unchecked", check=_check_ctc_targets
    ),
    "aten::ctc_loss": Rule(
        "check", "indexes log_probs with each target unchecked", check=_check_ctc_targets
    ),
    "aten::_ctc_loss_backward": Rule(
        "check", "indexes log_probs with each target unchecked", check=_check_ctc_targets
    ),
    "aten::_cudnn_ctc_loss": Rule(
        "check", "indexes log_probs with each target unchecked", check=_check_ctc_targets
    ),
    # text
    "aten::_print": Rule(
        "replace",
        "writes archive text to the terminal: made printable first",
        kernel=lambda s: _print_text({"s": s}),
    ),
    "aten::format": _refuse("formats archive text with values"),
    "aten::percentFormat": _refuse("formats archive text with values"),
    # safe as they are, despite their names
    "aten::_unsafe_index": _allow("calls index, which checks every index against its dimension"),
    "aten::_unsafe_index_put": _allow(
        "calls index_put_, which checks every index against its dimension"
    ),
    "aten::_unsafe_masked_index": _allow("clamps every index into its dimension before indexing"),
    "aten::_unsafe_masked_index_put_accumulate": _allow(
        "clamps every index into its dimension before indexing"
    ),
    "aten::_unsafe_view": _allow(_UNSAFE_ONLY_FOR_AUTOGRAD),
    "aten::unsafe_chunk": _allow(_UNSAFE_ONLY_FOR_AUTOGRAD),
    "aten::unsafe_split": _allow(_UNSAFE_ONLY_FOR_AUTOGRAD),
    "aten::unsafe_split_with_sizes": _allow(_UNSAFE_ONLY_FOR_AUTOGRAD),
    "aten::as_strided": _allow("torch checks that the view fits its storage (setStrided)"),
    "aten::as_strided_": _allow("torch checks that the view fits its storage (setStrided)"),
    "aten::as_strided_copy": _allow("torch checks that the view fits its storage (setStrided)"),
    "aten::as_strided_scatter": _allow("torch checks that the view fits its storage (setStrided)"),
    "aten::is_set_to": _allow("only compares two tensors' storages"),
    "aten::isprintable": _allow("a string predicate returning a bool"),
    "aten::einsum": _allow("its 'path' argument is a contraction order, not a file"),
}

# the safe and unsafe constructors of each compressed layout: (compressed, plain) index names
for _layout, (_compressed_name, _plain_name) in {
    "csr": ("crow_indices", "col_indices"),
    "csc": ("ccol_indices", "row_indices"),
    "bsr": ("crow_indices", "col_indices"),
    "bsc": ("ccol_indices", "row_indices"),
}.items():
    RULES[f"aten::sparse_{_layout}_tensor"] = RULES[f"aten::_sparse_{_layout}_tensor_unsafe"] = (
        Rule(
            "check",
            _SPARSE_CHECKED,
            check=_compressed(
                f"_validate_sparse_{_layout}_tensor_args", _compressed_name, _plain_name
            ),
        )
    )

REFUSED_NAMESPACES: dict[str, str] = {
    "inductor": "is compiler-internal: it builds views without checking its bounds",
    "inductor_prims": "is compiler-internal",
    "debugprims": "is a debugging primitive",
    "profiler": "changes the process's profiler state",
    "static_runtime": "is TorchScript runtime-internal",
    "symm_mem": "works on raw device memory shared between processes",
    "c10d": "runs collectives on process groups, which no archive can supply",
    "cuda": "changes the process's current CUDA device and stream",
    "fsdp": "is distributed-training internals (FSDP), which no exported program calls",
}

# Higher-order ops that compute only on tensors and the program's own subgraphs. Any other
# (compiled code, inline assembly, delegates, Python callables, script objects) is refused.
HIGHER_ORDER_ALLOWED: dict[str, str] = {
    "cond": "runs one of two subgraphs",
    "while_loop": "runs subgraphs, at most limits.max_loop_iterations times",
    "map_impl": "runs a subgraph once per slice of its input",
    "scan": "runs a subgraph once per slice of its input",
    "associative_scan": "combines slices of its input with a subgraph",
    "with_effects": "orders an effectful op, which this policy checks as well",
    "auto_functionalized": "runs an op this policy allows on copies of its mutable inputs",
    "auto_functionalized_v2": "runs an op this policy allows on copies of its mutable inputs",
    "wrap_with_set_grad_enabled": "runs a subgraph with gradients on or off",
    "wrap_with_autocast": "runs a subgraph under autocast",
    "wrap": "runs a subgraph",
    "tag_activation_checkpoint": "runs a subgraph",
    "hints_wrapper": "runs a subgraph",
    "invoke_subgraph": "runs a subgraph",
    "_export_tracepoint": "returns its inputs",
    "out_dtype": "runs an ATen op with a chosen output dtype",
    "flex_attention": "attention with a score subgraph",
    "print": "prints its template and values, never formatting the template, made printable",
}


def rule_for(namespace: str, name: str) -> Rule | None:
    """The rule for ``namespace::name`` (any overload), if the table has one."""
    return RULES.get(f"{namespace}::{name}")


def refusal(namespace: str, name: str, op: Any = None) -> str | None:
    """Why ``torch.ops.<namespace>.<name>`` may not run on archive data, or None."""
    if namespace in REFUSED_NAMESPACES:
        return f"namespace {namespace!r} {REFUSED_NAMESPACES[namespace]}"
    if namespace == "higher_order":
        return (
            None
            if name in HIGHER_ORDER_ALLOWED
            else (
                "is not a higher-order op pt2interp runs on archive data (see pt2interp.ops.policy)"
            )
        )
    rule = rule_for(namespace, name)
    if rule is not None and rule.verdict == "refuse":
        return rule.reason
    schema = getattr(op, "_schema", None)
    if (
        namespace == "aten"
        and schema is not None
        and any(str(r.type) == "str" for r in schema.returns)
    ):
        return (
            "returns a string: export never emits string ops, "
            "and archive text is never formatted or grown"
        )
    return None


def guard(namespace: str, name: str, op: Any, kernel: Callable) -> Callable:
    """``kernel`` as this policy lets it run: with its check first, replaced, or as it is."""
    rule = rule_for(namespace, name)
    if rule is None or rule.verdict == "allow":
        return kernel
    if rule.verdict == "replace":
        return rule.kernel or _copying(kernel)
    if rule.verdict == "check":
        names = (
            [a.name for a in op._schema.arguments]
            if getattr(op, "_schema", None) is not None
            else []
        )
        return _checked(rule.check, names, kernel)
    raise ValueError(f"{namespace}::{name} is refused: {rule.reason}")


def guard_target(target: str, op: Any, kernel: Callable) -> Callable:
    """:func:`guard` for a node target string (``torch.ops.aten.ctc_loss.IntList``)."""
    parts = target.split(".")
    if len(parts) < 4 or parts[0] != "torch" or parts[1] != "ops":
        return kernel
    return guard(parts[2], parts[3], op, kernel)


def guard_op(op: Any) -> Callable:
    """An op passed to a kernel as an argument, as this policy lets it run: a higher-order op
    runs as pt2interp's own kernel for it where there is one (``print`` never formats)."""
    schema = getattr(op, "_schema", None)
    if schema is None or "::" not in schema.name:
        from pt2interp.ops.registry import lookup

        name = op.name() if callable(getattr(op, "name", None)) else None
        entry = lookup(f"higher_order.{name}") if isinstance(name, str) else None
        return entry.kernel if entry is not None and entry.kernel is not None else op
    namespace, name = schema.name.split("::", 1)
    return guard(namespace, name, op, op)


def passes_unguarded(op: Any) -> bool:
    """Whether ``op`` may be handed to code that calls it without :func:`guard_op` (a
    higher-order op never: torch's own ``print`` would format archive text)."""
    schema = getattr(op, "_schema", None)
    if schema is None or "::" not in schema.name:
        return False
    rule = rule_for(*schema.name.split("::", 1))
    return rule is None or rule.verdict == "allow"


def _checked(check: Callable[[dict], None], names: list[str], kernel: Callable) -> Callable:
    def checked(*args, **kwargs):
        check({**dict(zip(names, args)), **kwargs})
        return kernel(*args, **kwargs)

    return checked


def _copying(kernel: Callable) -> Callable:
    def copying(*args, **kwargs):
        return kernel(*args, **kwargs).clone()

    return copying
