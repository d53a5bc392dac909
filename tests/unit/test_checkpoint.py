"""checkpoint.py and runs.py: each run checkpoints into a folder of its own, resumes only itself, exactly."""

import json
import os
import subprocess
import sys

import pytest
from runner import TRAIN_PY, child, run_main, same_weights, stop_at

import runs
import train
from checkpoint import KEEP, Checkpoints, LoopState
from model import Net
from sgd import FlatSGD

COMMON = "--fake-data 400 --log-interval 1 --progress off --threads 1".split()


def checkpoints_of(folder):
    return sorted(p.name for p in folder.glob("step-*.pt"))


def test_sigterm_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    flags = [*COMMON, "--epochs", "2"]
    assert train.main([*flags, "--output-dir", str(tmp_path / "a"), "--checkpoint-dir", str(tmp_path / "ca")]) == 0

    flags += ["--output-dir", str(tmp_path / "b"), "--checkpoint-dir", str(tmp_path / "cb")]
    code, rest = stop_at(child(flags, tmp_path), "epoch=1, batch=   30:")
    assert code == train.EXIT_PREEMPTED
    assert "checkpoint (SIGTERM)" in rest and "--resume auto" in rest
    assert not (tmp_path / "b" / "model.pt").exists()

    resumed = subprocess.run(
        [sys.executable, str(TRAIN_PY), *flags, "--resume", "auto"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "Finished Training" in resumed.stdout
    assert same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")


def test_a_new_run_over_a_shared_checkpoint_folder_trains_afresh(tmp_path, capsys):
    """The issue's two commands: run B, with --resume auto, must not finish with run A's weights."""
    shared = f"--checkpoint-dir {tmp_path / 'c'} --fake-data 400 --progress off".split()
    assert train.main([*shared, "--epochs", "2", "--output-dir", str(tmp_path / "oa")]) == 0
    a_files = {p: p.read_bytes() for p in (tmp_path / "c").rglob("*.pt")}
    capsys.readouterr()
    assert train.main([*shared, "--epochs", "1", "--output-dir", str(tmp_path / "ob"), "--resume", "auto"]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert not same_weights(tmp_path / "oa" / "model.pt", tmp_path / "ob" / "model.pt")
    summary = json.loads((tmp_path / "ob" / "summary.json").read_text())
    assert summary["config"]["epochs"] == 1 and "test/accuracy" in summary["final"]
    assert all(p.read_bytes() == b for p, b in a_files.items())  # A's checkpoints untouched
    assert len({p.parent for p in (tmp_path / "c").rglob("*.pt")}) == 2  # one folder per run


def test_a_stopped_run_keeps_its_checkpoint_beside_a_longer_runs_and_resumes_exactly(tmp_path):
    """By default (outputs/<run>/, checkpoints/<run>/): an earlier, longer run's higher step numbers
    no longer rotate away the checkpoint a stopped run printed."""
    flags = [*COMMON, "--epochs", "1", "--checkpoint-every", "20"]
    assert subprocess.run([sys.executable, str(TRAIN_PY), *COMMON, "--epochs", "3"], cwd=tmp_path).returncode == 0
    code, rest = stop_at(child(flags, tmp_path), "epoch=1, batch=   50:")
    assert code == train.EXIT_PREEMPTED
    printed = tmp_path / rest.split("checkpoint (SIGTERM): ")[1].split()[0]
    assert printed.is_file()
    resumed = subprocess.run(
        [sys.executable, str(TRAIN_PY), *flags, "--resume", "auto"], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {printed.relative_to(tmp_path)} " in resumed.stdout
    uninterrupted = tmp_path / "whole"
    flags += ["--output-dir", str(uninterrupted), "--checkpoint-dir", str(tmp_path / "whole-ckpt")]
    assert subprocess.run([sys.executable, str(TRAIN_PY), *flags], cwd=tmp_path).returncode == 0
    stopped_run = printed.parent.name
    assert same_weights(tmp_path / "outputs" / stopped_run / "model.pt", uninterrupted / "model.pt")
    assert len(list((tmp_path / "outputs").glob("run-*"))) == 2


def test_the_same_command_twice_keeps_both_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = "--epochs 1 --fake-data 40 --progress off".split()
    assert train.main(flags) == 0
    (first,) = (tmp_path / "outputs").glob("run-*")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert train.main(flags) == 0
    second = (tmp_path / "outputs" / "latest").resolve()
    assert second != first and (second / "summary.json").is_file()
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted((first.name, second.name))


def test_resume_auto_on_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs 1 --fake-data 40") == 0
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_main(tmp_path, "--epochs 1 --fake-data 40 --resume auto") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "has finished all 1 epochs" in out and "--epochs 2" in out
    assert "pass another --output-dir (or --overwrite) for a new run" in out  # not "leave out --resume": refused
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()} == files
    assert run_main(tmp_path, "--epochs 2 --fake-data 40 --resume auto") == 0  # extending it still works
    assert "resumed from" in capsys.readouterr().out


def test_on_azure_ml_the_jobs_run_id_names_the_run_so_a_restart_continues_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AZUREML_RUN_ID", "day1-experiment-train_1764000000_ab12cd34")
    flags = "--epochs 1 --fake-data 40 --progress off --checkpoint-every 5 --resume auto --overwrite".split()
    assert train.main(flags) == 0
    assert (tmp_path / "outputs" / "summary.json").is_file()  # ./outputs itself: Azure ML uploads it
    assert checkpoints_of(tmp_path / "checkpoints" / "day1-experiment-train_1764000000_ab12cd34")
    capsys.readouterr()
    assert train.main([*flags[:-3], "--epochs", "2", "--resume", "auto", "--overwrite"]) == 0  # the restart
    assert "resumed from checkpoints/day1-experiment-train_1764000000_ab12cd34/" in capsys.readouterr().out
    monkeypatch.setenv("AZUREML_RUN_ID", "day1-experiment-train_1764999999_ffff0000")  # a new job
    assert train.main(flags) == 0
    assert "resumed" not in capsys.readouterr().out


@pytest.mark.parametrize("other", ["--batch-size 8", "--normalize"])
def test_checkpoint_of_another_recipe_is_refused(other, tmp_path, capsys):
    assert run_main(tmp_path, "--epochs 1 --fake-data 40") == 0
    ckpt = sorted((tmp_path / "ckpt").glob("*/step-*.pt"))[-1]
    assert run_main(tmp_path, f"--fake-data 40 {other} --resume {ckpt}", out="o2") == 1
    err = capsys.readouterr().err
    made = {"--batch-size 8": "batch_size=4 (this run: 8)", "--normalize": "normalize=False (this run: True)"}
    assert f"another recipe: {made[other]}" in err and "--checkpoint-dir" in err


def test_unreadable_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_main(tmp_path, f"--fake-data 40 --resume {bad}") == 1
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_checkpoints_rotate_to_the_newest_two_of_the_run(tmp_path):
    assert run_main(tmp_path, "--epochs 2 --fake-data 80 --checkpoint-every 5") == 0  # 20 steps an epoch
    (folder,) = (tmp_path / "ckpt").iterdir()
    assert folder.name == runs.read_name(tmp_path / "out")
    assert checkpoints_of(folder) == ["step-00000035.pt", "step-00000040.pt"]


def test_a_save_after_resuming_from_an_earlier_file_drops_the_later_ones(tmp_path):
    """Rotation keeps the file written and the one before it: what a resumed run left behind goes."""
    model = Net()
    ckpts = Checkpoints(tmp_path, {"model": "Net", "lr": 0.001})
    for step in (10, 20, 30, 40):
        (tmp_path / f"step-{step:08d}.pt").write_bytes(b"")
    ckpts.save(model, FlatSGD(model, lr=0.001, momentum=0.9), LoopState(global_step=25))
    assert checkpoints_of(tmp_path) == ["step-00000020.pt", "step-00000025.pt"][-KEEP:]
    assert ckpts.restore(tmp_path / "step-00000025.pt", model, FlatSGD(model, 0.001, 0.9)) == LoopState(global_step=25)


def test_outputs_latest_names_the_newest_run_even_where_links_are_refused(tmp_path, monkeypatch):
    runs.point_latest(tmp_path, "run-1")
    assert os.readlink(tmp_path / "latest") == "run-1" and runs.latest_name(tmp_path) == "run-1"

    def refused(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("pathlib.Path.symlink_to", refused)
    runs.point_latest(tmp_path, "run-2")
    assert (tmp_path / "latest").read_text() == "run-2\n" and runs.latest_name(tmp_path) == "run-2"


def test_a_default_checkpoint_folder_that_cannot_be_made_falls_back_to_tmpdir_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """As a job running as uid 9000 in a working directory root owns: the run goes on, and says where."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    (tmp_path / "scratch").mkdir()
    (tmp_path / "checkpoints").write_text("not a folder")  # cannot be made, whoever runs the test
    flags = "--epochs 1 --fake-data 40 --progress off".split()
    assert train.main(flags) == 0
    out = capsys.readouterr().out
    (moved,) = (tmp_path / "scratch" / "checkpoints").iterdir()
    assert out.count("note: cannot create checkpoints") == 1 and f"go to {moved}/ instead" in out
    assert checkpoints_of(moved)
    assert train.main([*flags, "--checkpoint-dir", "checkpoints"]) == 1  # asked for by name: refused
    assert capsys.readouterr().err.startswith("error: cannot create checkpoints")
