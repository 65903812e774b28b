"""Embedded Chroma's index files must not copy what this process once held: heap blocks are filled.

hnswlib, under embedded Chroma, takes its level-0 buffer from malloc and writes it to its files whole. Its
unwritten bytes are whatever the heap held there before: in a store that had just imported and forgotten a
note, the HNSW file held the note's words and part of its id, copied from the import's freed buffers, and a
rebuilt index could hold them again. Once `M_PERTURB` is set, glibc fills the blocks malloc hands out, and those
freed, with a fixed byte, so the files hold that byte instead. Blocks of its per-thread cache (up to 1,032
bytes) are not filled; hnswlib clears its small per-element buffers itself. It is set for the whole process,
once, when an embedded index opens: on remember, recall and generation its cost was within the noise
(BENCHMARKS.md, "Heap fill"). Without glibc (no `mallopt`) nothing is done.
"""
from __future__ import annotations

import ctypes
import functools

M_PERTURB = -6  # glibc's mallopt parameter
FILL = 0x5A  # freed blocks get this byte, new ones its complement


@functools.cache
def fill_heap_blocks() -> bool:
    """Ask the C library to fill every block it allocates or frees; whether it agreed."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows loads no library by None
        return False
    return bool(mallopt(M_PERTURB, FILL))
