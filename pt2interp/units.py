"""Sizes as people read them, for the command line and pictures.

>>> human_bytes(512), human_bytes(116_736), human_bytes(3 * 2**40)
('512 B', '114.0 KiB', '3072.0 GiB')
"""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(n: int) -> str:
    """Bytes in B, KiB, MiB or GiB (the largest unit; nothing beyond GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
