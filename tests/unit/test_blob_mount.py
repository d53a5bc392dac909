"""Checkpoints and outputs on a mount with blob storage's semantics (blob_mount.py): renames, chmod and folder
fsync refused. A run there finishes with the weights it has anywhere, and a run killed in the middle of any file
write there is completed by `--resume auto`, equal to one never killed (test_kill_at_every_write.py's machinery).
"""

import io
import json
import os
import signal

import pytest
import test_kill_at_every_write as kill
import torch
from blob_mount import REFUSALS, emulate, remount
from runner import run_main, weights

import checkpoint
import outputs
import runs
import train

FLAGS = "--epochs 2 --fake-data 40 --checkpoint-every 3 --threads 1"


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_run_on_a_mount_that_refuses_renames_finishes_with_the_same_weights(refusal, tmp_path, monkeypatch, capsys):
    assert run_main(tmp_path / "local", FLAGS) == 0
    local = json.loads((tmp_path / "local" / "out" / outputs.SUMMARY).read_text())
    mount = tmp_path / "mount"
    emulate(monkeypatch, mount, REFUSALS[refusal])
    for name in ("_in_place", "_fsync_dir_refused"):
        monkeypatch.setattr(outputs, name, set())
    create = runs.create

    def create_then_remount(folders):  # the checkpoint folder is empty until the first checkpoint: it goes
        folders = create(folders)
        remount(mount)
        return folders

    monkeypatch.setattr(runs, "create", create_then_remount)
    capsys.readouterr()
    assert run_main(mount, FLAGS) == 0
    out = capsys.readouterr().out
    assert out.count("refuses renames") == 2, out  # once for the checkpoint folder, once for the outputs
    assert out.count("cannot fsync folders") == 2, out
    summary = json.loads((mount / "out" / outputs.SUMMARY).read_text())
    assert summary["weights_sha256"] == local["weights_sha256"]
    assert weights(mount / "out" / "model.pt").keys() == weights(tmp_path / "local" / "out" / "model.pt").keys()
    assert not list(mount.rglob(f"*{outputs.TORN}")) and not list(mount.rglob(f".{runs.LATEST}.*"))
    assert run_main(mount, f"{FLAGS} --resume auto") == 0
    assert "has finished all 2 epochs" in capsys.readouterr().out


def torn_by_a_kill(original):
    """The real atomic_write, its data cut short half way by a kill: where renames are refused, the part is
    written under the file's own name."""

    def write(path, produce, *rest):
        def half(f):
            buffer = io.BytesIO()
            produce(buffer)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            kill.die()

        original(path, half, *rest)

    return write


BLOB_WRITERS = [
    (module, name, label, torn_by_a_kill if name == "atomic_write" else during)
    for module, name, label, during in kill.WRITERS
]


@pytest.fixture(scope="module", params=REFUSALS)
def on_blob(request, tmp_path_factory):
    """(the mount, the writes in order, the uninterrupted run), while the mount refuses renames with the param."""
    root = tmp_path_factory.mktemp(f"blob-{request.param}")
    with pytest.MonkeyPatch.context() as mount:
        emulate(mount, root, REFUSALS[request.param])
        mount.setattr(kill, "WRITERS", BLOB_WRITERS)
        mount.setattr(outputs, "_in_place", set())
        mount.setattr(outputs, "_fsync_dir_refused", set())
        folder, writes, here = root / "whole", [], os.getcwd()
        folder.mkdir()
        with pytest.MonkeyPatch.context() as patch:
            kill.wrap(patch, writes)
            os.chdir(folder)
            try:
                assert train.main(kill.RECIPE) == 0
            finally:
                os.chdir(here)
        # Each forked run starts as a new process does: nothing known yet of the mount.
        mount.setattr(outputs, "_in_place", set())
        mount.setattr(outputs, "_fsync_dir_refused", set())
        yield root, writes, kill.finished(folder)


def test_a_checkpoint_that_does_not_match_its_sha256_gives_way_to_the_one_before(tmp_path, capsys):
    """A file of the right form whose bytes are not what was written (a block a kill left unwritten)."""
    assert run_main(tmp_path, "--epochs 1 --fake-data 40 --checkpoint-every 4") == 0
    (folder,) = (tmp_path / "ckpt").iterdir()
    before, newest = sorted(folder.glob("step-*.pt"))
    ckpt = torch.load(newest, weights_only=True)
    next(iter(ckpt["model"].values())).view(-1)[0] += 1
    torch.save(ckpt, newest)
    path, _ = checkpoint.newest_whole(folder, ckpt["recipe"])
    assert path == before
    assert f"note: {newest} does not match the sha256 recorded in it" in capsys.readouterr().out
    assert run_main(tmp_path, f"--epochs 1 --fake-data 40 --resume {newest}", out="again") == 1
    assert "does not match the sha256 recorded in it: delete it" in capsys.readouterr().err


def test_on_the_mount_the_census_has_every_file_write(on_blob):
    _, writes, _ = on_blob
    assert writes[:3] == ["outputs/latest", "latest", "run.json"]  # outputs/latest is then a file, written in place
    assert writes[-3:] == ["model.pt", "curves.png", "summary.json"]
    assert [w for w in writes if w.startswith("step-")] == [f"step-{s:08d}.pt" for s in (2, 4, 6, 8, 10, 12)]


def test_a_run_killed_in_the_middle_of_any_write_on_the_mount_is_completed_exactly(on_blob):
    root, writes, (whole_summary, whole_rows, _) = on_blob
    failures, torn_in_place = [], []
    for k, write in enumerate(writes):
        if write.startswith("metrics.jsonl"):  # appends, as anywhere: test_kill_at_every_write.py kills them
            continue
        folder = root / f"{k:03d}"
        codes = kill.start(folder, kill.RECIPE, 1, kill_at=k, phase="during")
        assert codes == [-signal.SIGKILL], f"write {k} ({write}): not killed: {codes}\n{kill.log_of(folder)}"
        if any(p.stat().st_size for p in folder.rglob(write) if p.is_file() and write != "latest"):
            torn_in_place.append(write)
        remount(folder)
        resumed = kill.start(folder, [*kill.RECIPE, "--resume", "auto"], 1)
        if resumed != [0]:
            failures.append(f"write {k} ({write}): --resume auto exited {resumed}:\n{kill.log_of(folder)[-2000:]}")
            continue
        problems, _ = kill.differences(folder, whole_summary, whole_rows)
        if problems:
            failures.append(f"write {k} ({write}): {', '.join(problems)} differ")
    assert not failures, "\n".join(failures)
    # The kills did tear files under their own names: every checkpoint but the folder's first, and the outputs.
    assert torn_in_place == [f"step-{s:08d}.pt" for s in (4, 6, 8, 10, 12)] + ["model.pt", "curves.png", "summary.json"]
