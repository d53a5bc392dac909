"""End to end from the host: the real image, the real `docker compose run train`, files on the host.

Run by `make test` after the image is built (IMAGE names it). Every test gets its own data,
outputs and checkpoint folders, mounted where compose.yaml mounts ./data, ./outputs, ./checkpoints.
"""

import json
import os
import re
import subprocess
import sys

import e2e_env
from e2e_env import IMAGE, LOSS_LINE, ROOT, TESTS_MOUNT, UID, compose_env


def compose(dirs, *args, timeout=600, check=True):
    return e2e_env.compose(compose_env(dirs), *args, timeout=timeout, check=check)


def test_the_same_compose_run_twice_keeps_both_runs_owned_by_the_user(dirs):
    flags = ["--epochs", "1", "--fake-data", "400", "--log-interval", "50"]
    r = compose(dirs, "run", "--rm", "train", *flags)
    assert len(LOSS_LINE.findall(r.stdout)) == 2
    assert "epoch=1, batch=   50: loss " in r.stdout and "Finished Training" in r.stdout
    first = (dirs["outputs"] / "latest").resolve()
    summary = json.loads((first / "summary.json").read_text())
    assert summary["config"]["epochs"] == 1 and summary["config"]["fake_data"] == 400
    assert summary["image_revision"] not in ("", "none")  # baked in at build time
    assert summary["image_ref"] == IMAGE and summary["run"] == first.name
    for name in ("model.pt", "metrics.jsonl", "summary.json", "curves.png"):
        assert (first / name).stat().st_uid == UID
    assert list((dirs["checkpoints"] / first.name).glob("step-*.pt"))  # at least the epoch-end checkpoint
    files = {p: p.read_bytes() for p in first.iterdir()}

    compose(dirs, "run", "--rm", "train", *flags)  # the README's first command, again: no flag to add
    second = (dirs["outputs"] / "latest").resolve()
    assert second != first and (second / "summary.json").stat().st_uid == UID
    assert {p: p.read_bytes() for p in first.iterdir()} == files


def test_an_output_folder_inside_the_container_is_said_to_vanish_or_refused(dirs):
    r = compose(dirs, "run", "--rm", "train", "--epochs", "1", "--fake-data", "40", "--output-dir", "/tmp/x")
    assert "warning: /tmp/x is on a tmpfs: its files are lost with the container; write under a mounted folder" in (
        r.stderr
    )
    assert "/work/outputs" in r.stderr
    r = compose(dirs, "run", "--rm", "train", "--fake-data", "40", "--output-dir", "run2", check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: cannot create run2: Read-only file system; pass another --output-dir under a ")
    assert "/work/outputs" in r.stderr


def test_docker_stop_mid_run_then_resume_auto_matches_an_uninterrupted_run(dirs):
    flags = ["--epochs", "1", "--fake-data", "20000", "--log-interval", "100", "--threads", "1"]
    compose(
        dirs, "run", "--rm", "train", *flags, "--output-dir", "outputs/full", "--checkpoint-dir", "checkpoints/full"
    )
    full = json.loads((dirs["outputs"] / "full" / "summary.json").read_text())

    name = f"cifar10-stop-test-{os.getpid()}"
    stopped = ["--output-dir", "outputs/stopped", "--checkpoint-dir", "checkpoints/stopped"]
    env = compose_env(dirs)
    child = subprocess.Popen(
        ["docker", "compose", "run", "--name", name, "train", *flags, *stopped],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in child.stdout:
            if line.startswith("epoch=1, batch=  500:"):
                subprocess.run(["docker", "stop", name], check=True, capture_output=True, timeout=60)
                break
        rest = child.stdout.read()
        assert child.wait(timeout=120) == 75, rest  # EXIT_PREEMPTED: checkpoint saved
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert "checkpoint (SIGTERM)" in rest and "Finished Training" not in rest
    assert not (dirs["outputs"] / "stopped" / "summary.json").exists()

    r = compose(dirs, "run", "--rm", "train", *flags, *stopped, "--resume", "auto")
    assert re.search(r"resumed from checkpoints/stopped/stopped-[\w-]+/step-", r.stdout), r.stdout
    resumed = json.loads((dirs["outputs"] / "stopped" / "summary.json").read_text())
    assert resumed["weights_sha256"] == full["weights_sha256"]


def test_plain_docker_run_with_arbitrary_uid_and_read_only_root(dirs):
    r = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--user",
            f"{UID}:{UID}",
            "-v",
            f"{dirs['outputs']}:/work/outputs",
            "-v",
            f"{dirs['checkpoints']}:/work/checkpoints",
            IMAGE,
            "--epochs",
            "1",
            "--fake-data",
            "100",
            "--log-interval",
            "25",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert len(LOSS_LINE.findall(r.stdout)) == 1
    assert (dirs["outputs"] / "latest" / "model.pt").stat().st_uid == UID


def test_real_format_cifar_files_through_compose(dirs):
    # The fixture is written inside the image (numpy lives there), as UID into the data mount;
    # a command instead of flags also shows the entrypoint running commands as Azure ML needs.
    tests = TESTS_MOUNT
    compose(dirs, "run", "--rm", "-v", tests, "train", "python", "/app/tests/cifar_fixture.py", "/work/data", "100")
    assert (dirs["data"] / "cifar-10-batches-py" / "data_batch_5").is_file()
    r = compose(
        dirs,
        "run",
        "--rm",
        "-v",
        tests,
        "--entrypoint",
        "python",
        "train",
        "/app/tests/e2e/train_on_fixture.py",
        "--epochs",
        "1",
        "--log-interval",
        "25",
        "--no-download",
    )
    assert len(LOSS_LINE.findall(r.stdout)) == 5  # 500 images / batch 4 = 125 steps
    assert json.loads((dirs["outputs"] / "latest" / "summary.json").read_text())["config"]["fake_data"] == 0


def test_missing_data_and_no_network_fails_in_one_line_and_writes_nothing(dirs):
    r = compose(dirs, "run", "--rm", "train", "--no-download", check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: CIFAR-10 is missing in data/")
    assert "Traceback" not in r.stderr
    assert list(dirs["outputs"].iterdir()) == []


def test_image_carries_labels_and_no_build_secrets():
    labels = json.loads(
        subprocess.check_output(["docker", "image", "inspect", IMAGE, "--format", "{{json .Config.Labels}}"], text=True)
    )
    for key in ("source", "revision", "version", "created"):
        assert f"org.opencontainers.image.{key}" in labels
    history = subprocess.check_output(["docker", "history", "--no-trunc", IMAGE], text=True)
    assert "PRIVATE KEY" not in history and "BEGIN CERTIFICATE" not in history
    look = "ls /run/secrets 2>/dev/null; grep -rl 'BEGIN CERTIFICATE' /opt/venv/etc /etc/pip* 2>/dev/null"
    found = subprocess.run(
        [*"docker run --rm --entrypoint sh".split(), IMAGE, "-c", look],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.stdout.strip() == ""


def test_compose_gives_the_container_the_shm_an_azure_ml_job_gets():
    """DataLoader workers (--pipeline tutorial) see the same /dev/shm here as in the job azure/aml.py describes."""
    sys.path.insert(0, str(ROOT / "azure"))
    import aml

    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    job = aml.Intent.__dataclass_fields__["shm_size"].default
    config = json.loads(e2e_env.compose(os.environ, "config", "--format", "json").stdout)
    assert int(config["services"]["train"]["shm_size"]) == int(job[:-1]) * units[job[-1]]
