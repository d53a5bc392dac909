"""rehearsal/local_run.py's copy of a job's ./outputs (what lands on the host, with and without tarfile's filters), and
the execution wrapper it starts jobs with (rehearsal/execution-wrapper.sh) on SIGTERM."""

import io
import signal
import subprocess
import tarfile

import pytest

import local_run


def outputs_tar():
    """./outputs as `docker cp` streams it, with members no trainer writes: a way out, an absolute path, links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in [
            ("outputs", tarfile.DIRTYPE, b""),
            ("outputs/model.pt", tarfile.REGTYPE, b"weights"),
            ("outputs/plots", tarfile.DIRTYPE, b""),
            ("outputs/plots/curves.png", tarfile.REGTYPE, b"png"),
            ("outputs/../escaped", tarfile.REGTYPE, b"out"),
            ("outputs//etc/absolute", tarfile.REGTYPE, b"abs"),
            ("outputs/passwd", tarfile.SYMTYPE, b""),
            ("outputs/hard", tarfile.LNKTYPE, b""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, len(data), 0o4777 if name.endswith(".pt") else 0o644
            info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.mark.parametrize("python", ["with the data filter", "without (Debian 12's 3.11.2)"])
def test_only_files_and_folders_inside_the_destination_land_there(tmp_path, monkeypatch, python):
    if python.startswith("with ") and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no filters")
    if python.startswith("without"):
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    dest = tmp_path / "run" / "outputs"
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=outputs_tar(), mode="r|") as tar:
        for member in tar:
            member.name = member.name.partition("/")[2]  # as collect() does: outputs/x -> x
            if member.name:
                local_run.extract(tar, member, dest)
    landed = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert landed == ["run", "run/outputs", "run/outputs/model.pt", "run/outputs/plots", "run/outputs/plots/curves.png"]
    assert (dest / "model.pt").read_bytes() == b"weights" and (dest / "model.pt").stat().st_mode & 0o7777 == 0o755


# A job that says when it is ready, exits 75 on SIGTERM as the trainer does, and otherwise runs until killed.
JOB = 'trap "echo got SIGTERM; exit 75" TERM; echo ready; while :; do sleep 1; done'


@pytest.mark.parametrize(
    "mode,grace,status,told",
    [("forward", "600", 75, True), ("kill", "0", 128 + 9, False)],
)
def test_the_execution_wrapper_forwards_sigterm_or_kills_the_job_after_the_grace(tmp_path, mode, grace, status, told):
    wrapper = [str(local_run.WRAPPER), mode, grace, str(tmp_path)]
    p = subprocess.Popen(["sh", *wrapper, "sh", "-c", f"pwd; {JOB}"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == str(tmp_path)  # the job runs in the working directory it was given
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == status  # the job's own status, as Azure ML reports it
    assert (p.stdout.read() == "got SIGTERM\n") == told


def test_the_execution_wrapper_exits_with_the_jobs_status_when_not_preempted(tmp_path):
    r = subprocess.run(["sh", str(local_run.WRAPPER), "kill", "30", str(tmp_path), "sh", "-c", "exit 3"], timeout=60)
    assert r.returncode == 3


def test_upload_data_uploads_the_data_set_and_refuses_a_fresh_clones_data_folder(upload_folders, monkeypatch, capsys):
    """./data of a fresh clone holds only .gitkeep: one error, nothing uploaded; the next command names REGISTRY."""
    import local_workspace

    data, handed = upload_folders
    (data / "cifar-10-python.tar.gz").unlink()
    (data / ".gitkeep").write_text("")
    monkeypatch.delenv("DATA_PATH", raising=False)
    monkeypatch.delenv("REGISTRY", raising=False)
    with pytest.raises(local_workspace.LocalWorkspaceError, match="holds neither cifar-10-batches-py nor"):
        local_workspace.upload_data()
    assert handed == []
    (data / "cifar-10-python.tar.gz").write_bytes(b"the archive")
    local_workspace.upload_data()
    assert handed == [([data / "cifar-10-python.tar.gz"], "datasets/cifar10")]
    assert "make submit COMPUTE=local REGISTRY=HOST:PORT DATA_PATH=datasets/cifar10" in capsys.readouterr().out
