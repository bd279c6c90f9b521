"""Stored tensor bytes in the machine's byte order: one swap for every backend.

``torch.save`` records the writer's byte order in a ``byteorder`` member (``little`` or ``big``;
archives without one are little-endian). Torch loads a storage of the other order by swapping
units of its element size, except that a complex number swaps its real and imaginary halves
separately, each a float of its own (``torch.UntypedStorage.byteswap``); so does this module.

>>> swap_unit("float32", 4), swap_unit("complex64", 8), swap_unit("complex32", 4)
(4, 4, 2)
>>> bytes(to_native(b"\\x00\\x01\\x02\\x03", 2))
b'\\x01\\x00\\x03\\x02'
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["NATIVE", "needs_swap", "swap_unit", "to_native"]

NATIVE = sys.byteorder


def needs_swap(byteorder: str) -> bool:
    """Whether bytes stored in ``byteorder`` differ from the machine's order."""
    return byteorder != NATIVE


def swap_unit(dtype_name: str, itemsize: int) -> int:
    """Bytes per swapped unit of a ``dtype_name`` element of ``itemsize`` bytes."""
    return max(itemsize // 2, 1) if dtype_name.startswith("complex") else itemsize


def to_native(raw: bytes | bytearray | memoryview, unit: int) -> np.ndarray:
    """A writable copy of ``raw`` with every ``unit`` bytes reversed (a trailing partial unit
    is left as it is); ``unit`` 1 copies."""
    swapped = np.frombuffer(raw, dtype=np.uint8).copy()
    if unit > 1:
        whole = len(swapped) // unit * unit
        swapped[:whole].view(f"u{unit}").byteswap(inplace=True)
    return swapped
