"""The one exception hierarchy of pt2interp.

Every failure that comes from the content of a ``.pt2`` file, or from inputs that do not fit
the program, raises a subclass of :class:`Pt2Error`. Messages name the culprit: the archive
member, the JSON path, the node, the input and dimension.
"""

from __future__ import annotations


class Pt2Error(Exception):
    """Base class for every error pt2interp raises about an archive or its use."""


class FormatError(Pt2Error):
    """The container is broken: not a zip, missing or corrupt members, unsafe member names."""


class SchemaError(Pt2Error):
    """The JSON program cannot be understood: wrong types, missing fields, unknown versions.

    ``member`` is the archive member, ``path`` the JSON path (``graph_module.graph.nodes[3]``).
    """

    def __init__(self, message: str, *, member: str | None = None, path: str | None = None):
        self.member = member
        self.path = path
        where = ""
        if member:
            where += f"{member}"
        if path:
            where += f" at {path}" if where else f"at {path}"
        super().__init__(f"{where}: {message}" if where else message)


class WeightError(Pt2Error):
    """A weight or constant cannot be materialized: too few bytes, bad dtype, unsafe pickle."""


class UnsupportedOpError(Pt2Error):
    """A node's target is not an op this torch has, or not an allowed callable at all."""


class InputMismatchError(Pt2Error, ValueError):
    """The inputs given to a program do not match what it was exported for."""


class GraphError(Pt2Error):
    """The graph is inconsistent: undefined values, cycles, dangling outputs."""


class ExecutionError(Pt2Error):
    """A node's kernel failed while the graph ran (a graph that does not fit its own shapes,
    an allocation that cannot be made). The message names the node, its target and the error
    the kernel raised; that error is the ``__cause__``."""


class DeviceError(Pt2Error):
    """The device asked for does not exist in this torch or on this machine."""


class LimitError(Pt2Error):
    """Going on would exceed a resource budget of :mod:`pt2interp.limits`; ``limit`` names it.
    A caller who trusts the file raises the budget with ``pt2interp.limits.override``."""

    def __init__(self, message: str, *, limit: str, where: str | None = None):
        self.limit = limit
        self.detail = message
        self.where = where  # the node that asked, once the interpreter knows it
        text = f"{where}: {message}" if where else message
        super().__init__(
            f"{text} (budget {limit}; raise it with pt2interp.limits.override({limit}=...))"
        )


class AOTInductorPackageError(FormatError):
    """The archive holds AOTInductor-compiled code, not a graph pt2interp can interpret."""
