"""The output-folder lock: one whole run at a time, array tasks of one job side by side."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cocu.curation.core.locking import FolderInUse, folder_lock

HOLD = """
import sys, time
from cocu.curation.core.locking import folder_lock
with folder_lock(sys.argv[1], sys.argv[2] or None):
    print("held", flush=True)
    time.sleep(30)
"""


def _holder(folder, slot: str = ""):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), slot], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_array_tasks_share_a_folder_that_a_whole_run_cannot_take(tmp_path):
    task = _holder(tmp_path, "slice 0 of 2")
    try:
        with folder_lock(tmp_path, "slice 1 of 2"):  # another task of the same job runs beside it
            pass
        with pytest.raises(FolderInUse, match="in use by another cocu run"):
            with folder_lock(tmp_path):
                pass
        with pytest.raises(FolderInUse):  # a second copy of the same task
            with folder_lock(tmp_path, "slice 0 of 2"):
                pass
    finally:
        task.kill()
        task.wait()
    with folder_lock(tmp_path):  # the kernel dropped the killed task's locks
        pass
    assert not list(tmp_path.iterdir())


def test_a_whole_run_excludes_array_tasks(tmp_path):
    whole = _holder(tmp_path)
    try:
        with pytest.raises(FolderInUse, match=f"pid {whole.pid}"):
            with folder_lock(tmp_path, "slice 0 of 2"):
                pass
    finally:
        whole.kill()
        whole.wait()
    with folder_lock(tmp_path, "slice 0 of 2"):
        pass
    assert not list(tmp_path.iterdir())
