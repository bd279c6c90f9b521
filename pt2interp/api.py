"""The public entry points that need torch (importing this module imports torch)."""

from __future__ import annotations

import os
from typing import BinaryIO

from pt2interp.loaded import LoadedProgram
from pt2interp.program import collector_paused, read_program


def load(
    path: str | os.PathLike | BinaryIO,
    device=None,
    model: str | None = None,
    *,
    inference_mode: bool = True,
    verify: bool = True,
) -> LoadedProgram:
    """Load a ``.pt2`` and return a program you call like the exported module.

    ``device``: where weights live and computation runs (``"cpu"``, ``"cuda"``, ...); None keeps
    them where the archive stored them (CPU). ``model``: which model of a multi-model archive.
    ``verify=False`` skips the CRC-32 check of the weight records (about 0.25 s per GB).

    >>> import torch, pt2interp, importlib.resources as r
    >>> prog = pt2interp.load(r.files("pt2interp.examples") / "tiny_mlp.pt2")
    >>> out = prog(torch.randn(2, 8))
    >>> tuple(out.shape)
    (2, 16)
    """
    with collector_paused():
        return LoadedProgram(
            read_program(path, model=model, verify=verify),
            device=device,
            inference_mode=inference_mode,
        )
