"""pt2interp: load, run, inspect and take apart PyTorch ``.pt2`` archives in pure Python."""

from pt2interp.archive import Archive, open_archive
from pt2interp.errors import (
    AOTInductorPackageError,
    DeviceError,
    ExecutionError,
    FormatError,
    GraphError,
    InputMismatchError,
    LimitError,
    Pt2Error,
    SchemaError,
    UnsupportedOpError,
    WeightError,
)
from pt2interp.program import Program, read_program

__version__ = "0.1.0"

__all__ = [
    "AOTInductorPackageError",
    "Archive",
    "DeviceError",
    "ExecutionError",
    "FormatError",
    "GraphError",
    "InputMismatchError",
    "LimitError",
    "Program",
    "Pt2Error",
    "SchemaError",
    "UnsupportedOpError",
    "WeightError",
    "load",
    "open_archive",
    "read_program",
]


def load(path, device=None, model=None, *, inference_mode=True, verify=True, **cuda_graphs):
    """Load a ``.pt2`` and return a callable program (see :func:`pt2interp.api.load`, which
    also takes ``cuda_graphs``, ``max_cuda_graphs`` and ``reuse_outputs``)."""
    from pt2interp.api import load as _load

    return _load(
        path,
        device=device,
        model=model,
        inference_mode=inference_mode,
        verify=verify,
        **cuda_graphs,
    )


def read_schema(path, model=None, *, check_ops=None):
    """Describe a ``.pt2`` without torch (see :func:`pt2interp.introspect.read_schema`)."""
    from pt2interp.introspect import read_schema as _read_schema

    return _read_schema(path, model=model, check_ops=check_ops)


def extract_weights(
    path, backend="torch", include_buffers=True, include_constants=False, *, model=None
):
    """``{name: tensor}`` of a ``.pt2`` (see :func:`pt2interp.extract.extract_weights`)."""
    from pt2interp.extract import extract_weights as _extract_weights

    return _extract_weights(
        path,
        backend=backend,
        include_buffers=include_buffers,
        include_constants=include_constants,
        model=model,
    )


def load_weights(module, path, strict=True, rename=None, dtype=None, device=None):
    """Copy a ``.pt2``'s or ``.safetensors``' weights into a module (see
    :func:`pt2interp.extract.load_weights`)."""
    from pt2interp.extract import load_weights as _load_weights

    return _load_weights(module, path, strict=strict, rename=rename, dtype=dtype, device=device)


def numpy_to_torch(array, dtype=None):
    """A numpy-backend array as a torch tensor (see :func:`pt2interp.extract.numpy_to_torch`)."""
    from pt2interp.extract import numpy_to_torch as _numpy_to_torch

    return _numpy_to_torch(array, dtype)


def to_python(path, class_name="Model", *, comments=True, weights=None):
    """Readable ``nn.Module`` source for a ``.pt2`` (see :func:`pt2interp.codegen.to_python`)."""
    from pt2interp.codegen import to_python as _to_python

    return _to_python(path, class_name, comments=comments, weights=weights)
