import subprocess
import sys

import pytest

from crack.allocator import uses_glibc

# Allocates, fills and frees a 64 MB tensor 10 times, counting minor page faults, before and after
# keep_freed_memory (after it twice: a warm-up round, then the one compared). In a child process:
# glibc's settings cannot be put back.
SCRIPT = """
import resource, torch
from crack.allocator import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(16 * 2**20)  # 64 MB of float32, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
applied = keep_freed_memory()
faults()
print(default, faults(), applied)
"""


@pytest.mark.skipif(not uses_glibc(), reason="glibc only")
def test_keep_freed_memory_stops_page_faulting_freed_blocks_back_in():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    default, kept, applied = int(out[0]), int(out[1]), out[2]
    assert applied == "True"
    # Defaults: each 64 MB block is a fresh mmap, 16,384 pages of 4 KB faulted in every time.
    assert default > 10 * 16_000
    # Kept: the pages are faulted in once and then reused. The warm-up round faults in the
    # first block, sometimes the first few (2-6 of 10 measured); the next round none.
    assert kept < default / 10
