"""One writer per tree: a second `generate` of the same dataset stops at once, naming the holder's PID."""
import os
import subprocess
import sys

import pytest
from conftest import run_cli, small_source_project

from der_pipeline.writer_lock import LOCK_NAME, StoreBusyError, exclusive_writer

HOLD = """
import sys, time
from der_pipeline.writer_lock import exclusive_writer
with exclusive_writer(sys.argv[1], "the test tree"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder, seconds=60):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # the lock is taken before this returns
    return proc


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    proc = _holder(tmp_path / "tree")
    try:
        with pytest.raises(StoreBusyError, match=rf"PID {proc.pid}\b"):
            with exclusive_writer(tmp_path / "tree", "the test tree"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with exclusive_writer(tmp_path / "tree", "the test tree"):  # a killed holder leaves no stale lock
        assert (tmp_path / "tree" / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_generate_exits_at_once_naming_the_writer_of_the_same_tree(tmp_path):
    """The real CLI: `generate -d boolq` against a tree another process writes; no model is loaded."""
    project = small_source_project(tmp_path, {"boolq/dev.jsonl": "boolq"}, 4)
    run_cli(["prepare", "--params", "params.yaml"], cwd=project)
    proc = _holder(project / "data" / "tree" / "boolq", seconds=900)
    try:  # waiting for the lock would outlast run_cli's timeout, which then fails the test
        out = run_cli(["generate", "--params", "params.yaml", "-d", "boolq", "--no-progress"], cwd=project,
                      check=False, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 1, out.stderr
    assert f"PID {proc.pid}" in out.stderr and "Traceback" not in out.stderr
    assert not list((project / "data" / "tree" / "boolq").glob("shard-*"))  # it made nothing
