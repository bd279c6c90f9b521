"""Files pt2interp writes get the mode any file the user creates gets.

``safetensors`` writes its files with mode 0600, so ``run -o`` and ``codegen --weights`` made
files other users could not read while ``weights -o`` made 0644 ones.
"""

from __future__ import annotations

import os


def as_created_file(path: str | os.PathLike) -> None:
    """Set ``path``'s mode to 0666 less the process umask, as ``open(path, "w")`` would.

    Reading the umask sets it for a moment: call this from the thread that writes the file.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
