"""Embedded Chroma's index files must not copy what this process once held: every heap block is filled.

hnswlib, under embedded Chroma, takes its element and link buffers from malloc and writes them to its files
whole, the unused link slots of each element included. Those bytes are whatever the heap held there before:
in a store that had just imported and forgotten a note, its HNSW file held the note's words and part of its
id, copied from the import's freed buffers, and a rebuilt index could hold them again. glibc fills every block
malloc hands out, and every block freed, with a fixed byte once `M_PERTURB` is set, so the files hold that byte
instead. It is set for the whole process, once, when an embedded index opens: on remember, recall and
generation its cost was within the noise (BENCHMARKS.md, "Heap fill"). Without glibc nothing is done.
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
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_PERTURB, FILL))
