"""Keeping freed CPU memory for reuse, so PyTorch's CPU forward passes stop page-faulting.

glibc's malloc serves large blocks (such as a batch of MobileNetV2 activations, tens of MB at
224 px) with fresh ``mmap`` calls and hands them back to the kernel when freed, and trims the
heap whenever more than a few MB at its top are free. Every batch then touches new pages, and
each 4 KB page costs a page fault: on the 2-core machine of the README's Performance section a
channels-last forward pass ran at 57-80 images/s with 4,700-9,100 page faults per image, and at
115-144 images/s with these settings (benchmarks/cpu_forward.py). Other allocators (jemalloc,
tcmalloc, macOS, Windows) do not behave like this and are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def uses_glibc() -> bool:
    """True if this process runs on Linux with glibc, whose malloc `keep_freed_memory` tunes."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Have glibc serve blocks up to ``limit_bytes`` from its heap and keep up to ``limit_bytes``
    of freed memory mapped, instead of returning it to the kernel after every batch.

    Affects the calling process and the processes it forks later (DataLoader workers). The cost
    is that the process keeps its peak memory mapped until it exits. Returns True if applied,
    False where the C library is not glibc.
    """
    if not uses_glibc():
        log.debug("Not glibc: malloc settings left as they are")
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    applied = libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes) and libc.mallopt(
        _M_TRIM_THRESHOLD, limit_bytes
    )
    if not applied:
        log.warning(
            "glibc refused mallopt(%d bytes): malloc settings left as they are", limit_bytes
        )
    return bool(applied)
