"""Checkpoints on blob storage through a real FUSE mount (rehearsal/blobmount.py over Azurite's blob API: rename
refused with ENOTSUP, chmod refused, a folder fsync answered with EIO), mounted on the host and bind-mounted as the
job's checkpoint folder under `docker compose run train`, as Azure ML mounts CHECKPOINT_PATH: the run finishes, and
`--resume auto` continues it exactly, past a checkpoint torn there as a kill mid-write leaves it.
"""

import json
import os
import re
import subprocess
import sys
import time
from ctypes.util import find_library
from pathlib import Path

import pytest

import datastore
from e2e_env import ROOT, compose, compose_env

pytestmark = pytest.mark.skipif(
    not (find_library("fuse") and Path("/dev/fuse").exists() and os.getuid() == 0),
    reason="needs libfuse2 (.ci/run installs it), /dev/fuse and root (to mount with allow_other)",
)
# 100 steps an epoch: checkpoints at steps 40 and 80, and 100 at the epoch's end (the newest two are kept).
FLAGS = "--fake-data 400 --checkpoint-every 40 --log-interval 50 --threads 1".split()
MOUNT_SECONDS = 30


@pytest.fixture
def blob(dirs, monkeypatch):
    """dirs["checkpoints"], with a datastore of its own (an empty blob container in Azurite) mounted over it by
    blobmount.py for the test; then the blobs it holds, listed through the blob API."""
    store = f"azureml-datastore-blob-mount-{os.getpid()}"
    monkeypatch.setenv("LOCAL_DATASTORE", store)
    mountpoint = dirs["checkpoints"]
    mount = subprocess.Popen(
        [sys.executable, str(ROOT / "rehearsal" / "blobmount.py"), datastore.start(), str(mountpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + MOUNT_SECONDS
    while not os.path.ismount(mountpoint):
        assert mount.poll() is None, f"blobmount.py exited {mount.returncode}: {mount.stderr.read()}"
        assert time.monotonic() < deadline, f"blobmount.py did not mount {mountpoint} in {MOUNT_SECONDS} s"
        time.sleep(0.05)
    try:
        yield datastore.listing
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
        mount.wait(timeout=MOUNT_SECONDS)
        subprocess.run(["docker", "rm", "-f", store], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", store], capture_output=True)


def train(dirs, *flags):
    return compose(compose_env(dirs), "run", "--rm", "train", *FLAGS, *flags).stdout


def test_checkpoints_on_a_blob_mount_finish_and_resume_exactly_past_a_torn_one(dirs, blob):
    train(dirs, "--epochs", "2", "--output-dir", "outputs/local", "--checkpoint-dir", "outputs/local-checkpoints")
    local = json.loads((dirs["outputs"] / "local" / "summary.json").read_text())

    out = train(dirs, "--epochs", "1", "--output-dir", "outputs/blob")
    (run,) = os.listdir(dirs["checkpoints"])
    assert re.findall(r"^note: .*refuses renames.*$", out, re.M) == [
        f"note: checkpoints/{run}/ refuses renames (Operation not supported; a blob storage mount?): its files are "
        f"written in place, and one a kill cut short is told from a whole one when read (a torn checkpoint gives "
        f"way to the one before)"
    ], out
    assert f"note: checkpoints/{run}/ cannot fsync folders (Input/output error" in out and "Finished Training" in out
    assert blob() == [f"{run}/step-00000080.pt", f"{run}/step-00000100.pt"]  # the blobs, as Azure would hold them

    newest = dirs["checkpoints"] / run / "step-00000100.pt"  # torn, as a kill while writing it in place leaves it
    os.truncate(newest, newest.stat().st_size // 2)
    out = train(dirs, "--epochs", "2", "--output-dir", "outputs/blob", "--resume", "auto")
    assert f"note: checkpoints/{run}/step-00000100.pt is not a readable checkpoint" in out, out
    assert f"resumed from checkpoints/{run}/step-00000080.pt at epoch 1, step 80" in out, out
    resumed = json.loads((dirs["outputs"] / "blob" / "summary.json").read_text())
    assert resumed["weights_sha256"] == local["weights_sha256"]
    assert blob() == [f"{run}/step-00000160.pt", f"{run}/step-00000200.pt"]
