"""pt2interp: load, run, inspect and take apart PyTorch ``.pt2`` archives in pure Python."""

from pt2interp.archive import Archive, open_archive
from pt2interp.errors import (
    AOTInductorPackageError,
    FormatError,
    GraphError,
    InputMismatchError,
    Pt2Error,
    SchemaError,
    UnsupportedOpError,
    WeightError,
)
from pt2interp.program import Program, read_program

__version__ = "0.1.0"

__all__ = [
    "AOTInductorPackageError", "Archive", "FormatError", "GraphError", "InputMismatchError", "Program",
    "Pt2Error", "SchemaError", "UnsupportedOpError", "WeightError", "load", "open_archive", "read_program",
]


def load(path, device=None, model=None, *, inference_mode=True):
    """Load a ``.pt2`` and return a callable program (see :func:`pt2interp.api.load`)."""
    from pt2interp.api import load as _load

    return _load(path, device=device, model=model, inference_mode=inference_mode)
