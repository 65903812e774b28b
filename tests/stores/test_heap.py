"""The heap fill that keeps freed memory out of embedded Chroma's index files (`stores.heap`)."""
from __future__ import annotations

import ctypes
import sys

import pytest

from agentmem.stores.heap import fill_heap_blocks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_block_malloc_hands_out_again_holds_nothing_of_what_was_freed():
    """hnswlib writes its malloc'd buffers to disk whole: a forgotten note's words came back in them."""
    assert fill_heap_blocks()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    secret = b"zylophrax keycard " * 200
    for _ in range(20):
        block = libc.malloc(len(secret))
        ctypes.memmove(block, secret, len(secret))
        libc.free(block)
        again = libc.malloc(len(secret))   # the allocator's freshest block of that size: most often the same one
        try:
            assert b"zylophrax" not in ctypes.string_at(again, len(secret))
        finally:
            libc.free(again)
