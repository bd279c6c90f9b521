"""A node's ``nn_module_stack`` metadata: the modules it ran inside, with their paths.

Export writes the stack as a string of ``key: (path, type)`` entries; module paths can hold
commas (``getattr(L['s'].net, '0')``), which torch 2.3 did not escape: entries are split only
outside brackets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleFrame:
    """One entry of a node's ``nn_module_stack``: the module it ran inside."""

    key: str
    fqn: str  # dotted path from the root module ("layer1.0.conv1"); "" for the root
    type_name: str  # "torch.nn.modules.conv.Conv2d"

    @property
    def class_name(self) -> str:
        return self.type_name.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------
# nn_module_stack
# ---------------------------------------------------------------------------------------


def _split_top_level_commas(text: str) -> list[str]:
    # Module paths like "getattr(L['s'].net, '0')" contain commas: split only outside brackets.
    if "(" not in text and "[" not in text:
        return text.split(",")
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


_MAX_MODULE_PATH = 4096
_MAX_GETATTR_UNWRAP = 32


def normalize_module_path(path: str) -> str:
    """Turn dynamo's access path (``getattr(L['self'].net, '0')``) into an FQN (``net.0``)."""
    p = path.strip()
    if len(p) > _MAX_MODULE_PATH:
        return p  # no module path is this long: left as is, not unwrapped at quadratic cost
    # unwrap getattr(X, 'name') → X.name, innermost first
    for _ in range(_MAX_GETATTR_UNWRAP):
        if not (p.startswith("getattr(") and p.endswith(")")):
            break
        inner = p[len("getattr(") : -1]
        parts = _split_top_level_commas(inner)
        if len(parts) != 2:
            break
        p = parts[0].strip() + "." + parts[1].strip().strip("'\"")
    for prefix in ("L['self']", "L['s']", "L__self__", "self"):
        if p == prefix:
            return ""
        if p.startswith(prefix + "."):
            p = p[len(prefix) + 1 :]
            break
    if p.startswith("L['") and "']" in p:
        # another root name: L['mod'].x → x
        p = p.split("']", 1)[1].lstrip(".")
    p = p.replace("['", ".").replace("']", "").replace("[", ".").replace("]", "")
    return p.strip(".")


def parse_nn_module_stack(text: str | None) -> list[ModuleFrame]:
    """The frames of a node's ``nn_module_stack`` metadata, outermost first."""
    if not text:
        return []
    return list(_parse_nn_module_stack(text))


# torch's stand-in for "no module stack recorded" (a sym_size node of an input, say): no module
_EMPTY_STACK_KEY = "_empty_nn_module_stack_from_metadata_hook"


@functools.lru_cache(maxsize=65536)
def _parse_nn_module_stack(text: str) -> tuple[ModuleFrame, ...]:
    # Consecutive nodes of one module share the same string: parse each distinct one once.
    frames = []
    for item in text.split(";"):
        parts = _split_top_level_commas(item)
        if len(parts) < 3:
            continue
        key, type_name = parts[0], parts[-1]
        path = ",".join(parts[1:-1])
        if _EMPTY_STACK_KEY in (key, path):
            continue
        frames.append(ModuleFrame(key=key, fqn=normalize_module_path(path), type_name=type_name))
    return tuple(frames)
