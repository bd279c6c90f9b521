"""The public entry points that need torch (importing this module imports torch)."""

from __future__ import annotations

import os
from typing import BinaryIO

from pt2interp.cuda_graphs import DEFAULT_MAX_GRAPHS
from pt2interp.loaded import LoadedProgram
from pt2interp.program import collector_paused, read_program


def load(
    path: str | os.PathLike | BinaryIO,
    device=None,
    model: str | None = None,
    *,
    inference_mode: bool = True,
    verify: bool = True,
    cuda_graphs: bool = False,
    max_cuda_graphs: int = DEFAULT_MAX_GRAPHS,
    reuse_outputs: bool = False,
) -> LoadedProgram:
    """Load a ``.pt2`` and return a program you call like the exported module.

    ``device``: where weights live and computation runs (``"cpu"``, ``"cuda"``, ...); None keeps
    them where the archive stored them (CPU). ``model``: which model of a multi-model archive.
    ``verify=False`` skips the CRC-32 check of the weight records (about 0.25 s per GB).

    ``cuda_graphs=True`` (on a CUDA device) runs calls as CUDA graphs: the first call with a new
    input signature (shapes, dtypes, devices) captures one, later calls replay it; at most
    ``max_cuda_graphs`` are kept (least recently used dropped), ``prog.capture(...)`` captures
    ahead of time. Calls return fresh tensors unless ``reuse_outputs=True`` returns the graph's
    own output tensors, which the next call overwrites. A program one graph cannot hold (see
    ``prog.capture_plan``: a ``.item()``, ``nonzero``, ``cond`` on data, random numbers) runs
    its long runs of nodes between such blockers as graphs of their own and the rest eagerly
    (verdict ``segments``), or, where no run is long enough to pay, all eagerly, with a warning
    saying why.

    >>> import torch, pt2interp, importlib.resources as r
    >>> prog = pt2interp.load(r.files("pt2interp.examples") / "tiny_mlp.pt2")
    >>> out = prog(torch.randn(2, 8))
    >>> tuple(out.shape)
    (2, 16)
    """
    with collector_paused():
        program = read_program(path, model=model, verify=verify)
        try:
            return LoadedProgram(
                program,
                device=device,
                inference_mode=inference_mode,
                cuda_graphs=cuda_graphs,
                max_cuda_graphs=max_cuda_graphs,
                reuse_outputs=reuse_outputs,
            )
        except BaseException:
            # nothing will read the weights: the file is closed now, not when collected
            if not hasattr(path, "read"):  # a file object stays the caller's to close
                program.archive.close()
            raise
