"""Higher-order ops: control flow and the wrappers export emits around effects.

Subgraph arguments reach these kernels as callables (the interpreter's compiled subgraphs):
``fn(*operands) -> list`` of the subgraph's outputs. Kernels here run exactly what eager
``torch.cond`` / ``while_loop`` / ``map`` do, without tracing machinery.
"""

from __future__ import annotations

from pt2interp import limits
from pt2interp.errors import LimitError
from pt2interp.ops import policy
from pt2interp.ops.registry import Call, register
from pt2interp.printable import printable


def cond(pred, true_fn, false_fn, operands=()):
    branch = true_fn if bool(pred) else false_fn
    return list(branch(*operands))


def while_loop(cond_fn, body_fn, carried_inputs, additional_inputs=()):
    carried = list(carried_inputs)
    additional = list(additional_inputs)
    budget = limits.current().max_loop_iterations
    iterations = 0
    while bool(_single(cond_fn(*carried, *additional))):
        if iterations == budget:
            raise LimitError(
                f"while_loop ran {budget} iterations and its condition is still true",
                limit="max_loop_iterations",
            )
        carried = list(body_fn(*carried, *additional))
        iterations += 1
    return carried


def map_impl(fn, xs, pos_args=()):
    import torch

    xs = list(xs)
    if not xs:
        return []
    per_step = [list(fn(*[x[i] for x in xs], *pos_args)) for i in range(xs[0].shape[0])]
    return [torch.stack([step[j] for step in per_step]) for j in range(len(per_step[0]))]


def checkpointed(body, *args, **checkpoint_options):
    """``tag_activation_checkpoint``: the body's outputs. Checkpointing only trades memory for
    recomputation in a backward pass (torch's own kernel needs a traced GraphModule)."""
    return list(body(*args))


# Higher-order ops that run one subgraph, as torch's own kernels for them do; running them here
# also runs archives from a torch newer than the installed one (torch 2.5 has no
# wrap_with_set_grad_enabled op to call).


def grad_region(enabled, body, *args):
    import torch

    with torch.set_grad_enabled(enabled):
        return list(body(*args))


def autocast_region(device_type, dtype, enabled, cache_enabled, body, *args):
    import torch

    with torch.autocast(
        device_type=device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled
    ):
        return list(body(*args))


def wrap(body, *args, **kwargs):
    return list(body(*args))


def invoke_subgraph(body, identifier, *operands):
    return list(body(*operands))


def hints_wrapper(body, args, kwargs, *, hints=None):
    return list(body(*args, **kwargs))


def with_effects(token, op, *args, **kwargs):
    import torch

    result = policy.guard_op(op)(*args, **kwargs)
    new_token = torch.empty(0)
    if isinstance(result, (tuple, list)):
        return (new_token, *result)
    return (new_token, result)


def auto_functionalized(op, **kwargs):
    """Run a mutating custom op on copies of its mutable arguments: (result, *new values)."""
    mutable = [
        a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write
    ]
    call_kwargs = dict(kwargs)
    for name in mutable:
        if call_kwargs.get(name) is not None:
            call_kwargs[name] = call_kwargs[name].clone()
    result = policy.guard_op(op)(**call_kwargs)
    new_values = [call_kwargs.get(name) for name in mutable]
    if result is None or (isinstance(result, tuple) and len(result) == 0):
        return (None, *new_values)
    if isinstance(result, tuple):
        return (*result, *new_values)
    return (result, *new_values)


def safe_print(format_str, *args, **kwargs):
    """``torch._higher_order_ops.print`` without ``str.format``: archive text is never a format
    string (a field like ``{0.__class__...}`` walks attributes). The template and the values
    are printed side by side, made printable."""
    import sys

    values = [repr(v) for v in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    sys.stdout.write(printable(" ".join([str(format_str), *values]), keep_newlines=True) + "\n")


def _single(value):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"while_loop condition returned {len(value)} values, expected 1")
        return value[0]
    return value


def _sample_cond(gen):
    import torch

    x = torch.randn(3, generator=gen)
    return (x.sum() > 0, lambda t: [t + 1], lambda t: [t - 1], [x]), {}


@register("higher_order.cond", kernel=cond, sample=_sample_cond)
def _cond(c: Call) -> str:
    pred, t, f, ops_ = (c.positional + ["()"] * 4)[:4]
    return f"torch.cond({pred}, {t}, {f}, {ops_})"


# codegen writes while_loop as a Python while (codegen/bodies.py); map calls the op object, with
# the arguments as the graph has them (map's public wrapper is not importable by name)
register("higher_order.while_loop", kernel=while_loop, family="higher_order")(None)


@register("higher_order.map_impl", kernel=map_impl)
def _map(c: Call) -> str:
    return f"torch.ops.higher_order.map_impl({', '.join(c.positional)})"


# torch's own scan kernels run them (the interpreter passes its compiled subgraphs); generated
# code calls the op object the same way, with the arguments in the order the archive has them
@register("higher_order.scan")
def _scan(c: Call) -> str:
    return f"torch.ops.higher_order.scan({', '.join(c.positional)})"


@register("higher_order.associative_scan")
def _associative_scan(c: Call) -> str:
    return f"torch.ops.higher_order.associative_scan({', '.join(c.positional)})"


# codegen writes these as a call of their body (codegen/bodies.py's regions)
for _name, _kernel in (
    ("tag_activation_checkpoint", checkpointed),
    ("wrap_with_set_grad_enabled", grad_region),
    ("wrap_with_autocast", autocast_region),
    ("wrap", wrap),
    ("invoke_subgraph", invoke_subgraph),
    ("hints_wrapper", hints_wrapper),
):
    register(f"higher_order.{_name}", kernel=_kernel, family="higher_order")(None)


# codegen writes the effectful op itself (codegen/bodies.py): tokens carry no data in eager code
register("higher_order.with_effects", kernel=with_effects, family="higher_order")(None)


@register("higher_order.auto_functionalized", kernel=auto_functionalized)
def _auto_functionalized(c: Call) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in c.args.items() if k)
    return f"torch.ops.higher_order.auto_functionalized({c.positional[0]}, {kwargs})"


@register("higher_order.print", kernel=safe_print)
def _print(c: Call) -> str:
    """What :func:`safe_print` prints: the template made printable (never formatted), then each
    value's ``repr``, keyword values as ``name=repr``."""
    import ast

    from pt2interp.codegen.printer import constant_text

    template, *values = c.by_position
    try:
        text = ast.literal_eval(template)
    except (ValueError, SyntaxError):
        text = None
    parts = [
        constant_text(printable(text, keep_newlines=True))
        if isinstance(text, str)
        else f"str({template})"
    ]
    parts += [f"repr({v})" for v in values]
    parts += [f"{constant_text(printable(k) + '=')} + repr({v})" for k, v in c.keywords]
    return f"print({', '.join(parts)})"
