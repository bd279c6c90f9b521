"""``LoadedProgram.module()``: the program as a ``torch.nn.Module``.

Parameters and buffers are registered under their original dotted names (``layer1.0.conv1.weight``
lives at ``module.layer1[0].conv1.weight``-style attributes), so ``state_dict()`` keys equal the
exporting module's, and ``.to()``, ``.half()``, ``load_state_dict()`` work as on any module.
The module shares its tensors with the program (no copy): changing one changes the other.
Unlike ``LoadedProgram.__call__``, ``forward`` follows the caller's grad mode, so outputs can be
used with autograd.
"""

from __future__ import annotations

import torch

from pt2interp.kinds import InputKind
from pt2interp.loaded import LoadedProgram


class ProgramModule(torch.nn.Module):
    def __init__(self, program: LoadedProgram):
        super().__init__()
        object.__setattr__(self, "_program", program)
        specs = program.program.signature.input_specs
        for spec in specs:
            value = program._state.get(spec.target)
            if spec.kind is InputKind.PARAMETER:
                owner, leaf = self._owner(spec.target)
                owner.register_parameter(
                    leaf, torch.nn.Parameter(value, requires_grad=value.requires_grad)
                )
            elif spec.kind is InputKind.BUFFER:
                owner, leaf = self._owner(spec.target)
                owner.register_buffer(leaf, value, persistent=spec.persistent is not False)

    def _owner(self, dotted: str) -> tuple[torch.nn.Module, str]:
        *path, leaf = dotted.split(".")
        owner: torch.nn.Module = self
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                child = torch.nn.Module()
                owner.add_module(part, child)
            owner = child
        return owner, leaf

    def forward(self, *args, **kwargs):
        prog = self._program
        current = dict(self.named_parameters(remove_duplicate=False))
        current.update(self.named_buffers(remove_duplicate=False))
        if any(prog._state.get(name) is not t for name, t in current.items()):
            prog.adopt_state(current)
        saved, prog.inference_mode = prog.inference_mode, False
        try:
            return prog.run(*args, **kwargs)
        finally:
            prog.inference_mode = saved

    def extra_repr(self) -> str:
        return f"source={self._program.program.source!r}"
