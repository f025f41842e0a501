"""host_memory.keep_freed_memory: a freed large block is reused by the next allocation instead of being handed
back to the kernel and faulted in again, page by page. Each case runs in its own interpreter, since the
setting is process-wide (and this test process has it on, as conftest.py sets it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# Allocate, write and free a 64 MB tensor 21 times; report the minor page faults of the last nine rounds. (With
# the setting, the first rounds still grow the heap, 8 of them here, until freed blocks coalesce into one
# that fits the next aligned request; then the heap stops growing.)
PROBE = """
import json, resource, sys
import torch
from itkm_lightning.host_memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(12):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    torch.ones(16 * 2**20)
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

PAGES_PER_ROUND = 16 * 2**20 * 4 // 4096  # 16,384 pages of 4 KB


def probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={**environ, **env})
    return json.loads(done.stdout)


def test_a_freed_block_is_reused_without_new_page_faults():
    default, kept = probe("default"), probe("keep")
    assert default["faults"] >= 9 * PAGES_PER_ROUND * 0.9  # glibc's default: every round faults its pages anew
    assert kept["took"] is True
    assert kept["faults"] < PAGES_PER_ROUND  # less than one round's pages in nine rounds


def test_the_opt_out_keeps_glibc_defaults():
    released = probe("keep", ITKM_HOST_MEMORY="release")
    assert released["took"] is False
    assert released["faults"] >= 9 * PAGES_PER_ROUND * 0.9
