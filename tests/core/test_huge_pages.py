"""Huge pages for torch's CPU tensors (core/huge_pages.py): asked for by every package that runs
torch, before torch's first allocation, and really granted by the kernel where it has them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.huge_pages import VARIABLE
from tests.conftest import ROOT

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def run_python(code: str, value: str | None) -> str:
    """`code` in a fresh interpreter whose environment has VARIABLE=value (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if value is not None:
        env[VARIABLE] = value
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("package", ["train", "serve", "bench"])
def test_each_package_that_runs_torch_asks_for_huge_pages_unless_told_otherwise(package):
    code = f"import os, {package}; print(os.environ.get({VARIABLE!r}))"
    assert run_python(code, None) == "1"
    assert run_python(code, "0") == "0"  # a user's choice (e.g. to compare) is kept


def kernel_mode() -> str:
    found = re.search(r"\[(\w+)\]", THP_MODE.read_text()) if THP_MODE.exists() else None
    return found.group(1) if found else "missing"


@pytest.mark.skipif(kernel_mode() not in ("madvise", "always"), reason="the kernel has no transparent huge pages")
def test_a_large_tensor_lands_on_huge_pages_when_asked():
    # 64 MB written through, then the process's anonymous huge pages counted (kB).
    code = (
        "import serve, torch\n"
        "t = torch.ones(64 << 20, dtype=torch.uint8)\n"
        "print(sum(int(line.split()[1]) for line in open('/proc/self/smaps') if line.startswith('AnonHugePages:')))"
    )
    on = int(run_python(code, None))
    assert on >= 32 * 1024, on
    if kernel_mode() == "madvise":  # huge pages only where asked for ("always" gives them to everyone)
        off = int(run_python(code, "0"))
        assert on >= off + 32 * 1024, (on, off)
