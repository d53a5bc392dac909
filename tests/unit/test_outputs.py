"""outputs.py: results written whole or not at all, never replaced unasked, never left where they vanish."""

import errno
import json
import os

import pytest
from runner import run_main

import outputs

# /proc/self/mountinfo of a compose run (mount id, parent, dev, root, mount point, options, -, fs type, ...)
COMPOSE_MOUNTINFO = """\
600 500 0:60 / / ro,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
601 600 0:61 / /proc rw,nosuid - proc proc rw
602 600 0:62 / /tmp rw,nosuid - tmpfs tmpfs rw
603 600 8:1 /srv/clone/outputs /work/outputs rw,relatime - ext4 /dev/vda rw
604 600 8:1 /srv/clone/checkpoints /work/checkpoints rw,relatime - ext4 /dev/vda rw
605 600 8:1 /var/lib/docker/containers/x/hosts /etc/hosts rw - ext4 /dev/vda rw
606 600 0:63 / /dev/shm rw - tmpfs shm rw
"""


def test_finished_results_are_never_overwritten_unasked(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs 1 --fake-data 40") == 0
    before = (tmp_path / "out" / "summary.json").read_bytes()
    assert run_main(tmp_path, "--epochs 1 --fake-data 40 --seed 1") == 1
    assert "already holds results" in capsys.readouterr().err
    assert (tmp_path / "out" / "summary.json").read_bytes() == before
    assert run_main(tmp_path, "--epochs 1 --fake-data 40 --seed 1 --overwrite") == 0


@pytest.mark.parametrize("left", ["model.pt", "curves.png"])
def test_a_folder_holding_only_old_weights_or_plot_is_not_overwritten_unasked(left, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / left).write_bytes(b"an old clone's file")
    assert run_main(tmp_path, "--epochs 1 --fake-data 40") == 1
    assert f"already holds results ({left})" in capsys.readouterr().err
    assert (tmp_path / "out" / left).read_bytes() == b"an old clone's file"


def test_a_failed_write_leaves_the_old_file_no_temporary_and_one_line(tmp_path):
    target = tmp_path / "summary.json"
    outputs.write_json({"run": 1}, target)

    def disk_full(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(outputs.OutputError) as err:
        outputs.atomic_write(target, disk_full)
    assert str(err.value) == (
        f"cannot write to {tmp_path}/ (No space left on device): "
        f"free space there (or mount a larger volume), or pass another --output-dir"
    )
    assert json.loads(target.read_text()) == {"run": 1} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_mount_that_refuses_folder_fsync_costs_one_note_not_the_run(tmp_path, monkeypatch, capsys):
    """blobfuse2 answers a folder fsync with EIO (its libfuse fsyncdir); the file's own fsync works."""
    real_fsync = os.fsync

    def fuse_fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fuse_fsync)
    monkeypatch.setattr(outputs, "_fsync_dir_refused", set())
    assert run_main(tmp_path, "--epochs 2 --fake-data 40 --checkpoint-every 3") == 0
    out = capsys.readouterr().out
    assert out.count("cannot fsync folders") == 2  # once for the checkpoint folder, once for the outputs
    assert (tmp_path / "out" / "model.pt").is_file() and not list(tmp_path.rglob("*.tmp"))


def test_folders_inside_the_container_are_said_to_vanish_and_mounted_ones_are_not():
    table = outputs.mounts_from(COMPOSE_MOUNTINFO)
    assert outputs.vanishing("/work/outputs/run-1", table, container=True) is None
    lost = outputs.vanishing("/tmp/x", table, container=True)
    assert lost == (
        "/tmp/x is on a tmpfs: its files are lost with the container; "
        "write under a mounted folder (/work/checkpoints, /work/outputs)"
    )
    assert "in the container's own file system" in outputs.vanishing("/work/run2", table, container=True)
    assert outputs.vanishing("/tmp/x", table, container=False) is None  # a laptop's /tmp is its own


def test_the_real_mount_table_is_read(tmp_path):
    table = outputs.mounts()
    assert "/" in table and outputs.mount_of(tmp_path, table)[0] in table
