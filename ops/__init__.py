"""The op registry: how each ATen op runs and how it reads as Python source.

Importing this package registers every family. See :mod:`pt2interp.ops.registry`.
"""

# Families register themselves on import; the order does not matter.
from pt2interp.ops import functorch, higher_order, registry, symbolic  # noqa: F401
from pt2interp.ops.registry import REGISTRY, Call, OpEntry, lookup, register, resolve_torch_op

for _family in ("elementwise", "shape", "nn", "attention", "reduction", "indexing", "factory"):
    try:
        __import__(f"pt2interp.ops.{_family}")
    except ModuleNotFoundError as _exc:  # a family not written yet
        if _exc.name != f"pt2interp.ops.{_family}":
            raise

__all__ = ["REGISTRY", "Call", "OpEntry", "lookup", "register", "registry", "resolve_torch_op"]
