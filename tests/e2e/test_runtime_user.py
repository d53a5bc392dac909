"""Who the image runs as (docs/runtime.md): the README's first command from a fresh clone for host users of
uid 0 and 1001 with nothing exported, the drop from root to the owner of ./outputs, and a read-only root
without a writable /tmp."""

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from e2e_env import IMAGE, tracked_copy

README_FIRST = "docker compose run --rm train --fake-data 2000 --epochs 1"
DEFAULT_IMAGE = "cifar10-trainer:local"  # compose.yaml's default: what a fresh clone runs
TRYOUT = "cifar10-tryout"

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="makes a user and hands folders to it: run as root (CI does)")


def fresh_clone(owner_uid):
    """The tracked files of this work tree (what `git clone` gives), in a folder owned by owner_uid."""
    dest = tracked_copy(Path(tempfile.mkdtemp(prefix="fresh-clone-")) / "cifar10-trainer", owner_uid)
    os.lchown(dest.parent, owner_uid, owner_uid)
    os.chmod(dest.parent, 0o755)
    return dest


@pytest.fixture(scope="module")
def tryout_user():
    """A host user of uid 1001 (or the next free one) in the docker group, removed afterwards."""
    uid = next(u for u in range(1001, 1100) if not any(p.pw_uid == u for p in pwd.getpwall()))
    subprocess.run(["useradd", "--uid", str(uid), "--user-group", "--groups", "docker", TRYOUT], check=True)
    yield uid
    subprocess.run(["userdel", TRYOUT], check=False)


def run_as(user, command, cwd):
    # Nothing exported: only IMAGE, and only when the tests run another tag than a fresh clone would.
    prefix = "" if IMAGE == DEFAULT_IMAGE else f"IMAGE={shlex.quote(IMAGE)} "
    line = f"cd {shlex.quote(str(cwd))} && {prefix}{command}"
    argv = ["bash", "-c", line] if user == "root" else ["su", user, "-s", "/bin/bash", "-c", line]
    # Nor the session registry's login (DOCKER_CONFIG, REGISTRY_CREDENTIALS: root's files, tests/e2e/local_registry.py)
    session = ("IMAGE", "LOCAL_UID", "LOCAL_GID", "OUTPUTS_DIR", "DOCKER_CONFIG", "REGISTRY_CREDENTIALS")
    env = {k: v for k, v in os.environ.items() if k not in session}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


@needs_root
@pytest.mark.parametrize("user", ["root", TRYOUT])
def test_readme_first_command_from_a_fresh_clone_writes_files_the_host_user_owns(user, request):
    uid = 0 if user == "root" else request.getfixturevalue("tryout_user")
    clone = fresh_clone(uid)
    try:
        r = run_as(user, README_FIRST, clone)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Finished Training" in r.stdout and "Traceback" not in r.stderr
        written = [*(clone / "outputs").rglob("*"), *(clone / "checkpoints").rglob("*")]  # outputs/<run>/, latest
        assert {p.name for p in written} >= {"model.pt", "summary.json", "metrics.jsonl", ".gitkeep", "latest"}
        assert {p.name: p.stat().st_uid for p in written} == {p.name: uid for p in written}
    finally:
        shutil.rmtree(clone.parent)


def run_image(*args, volumes=(), user=None, env=(), entrypoint=None, read_only=False):
    argv = ["docker", "run", "--rm", "--network", "none", *(["--user", user] if user else [])]
    argv += [*(["--entrypoint", entrypoint] if entrypoint else []), *(["--read-only"] if read_only else [])]
    for host, container in volumes:
        argv += ["-v", f"{host}:{container}"]
    for pair in env:
        argv += ["-e", pair]
    return subprocess.run([*argv, IMAGE, *args], capture_output=True, text=True, timeout=300)


@needs_root
def test_started_as_root_the_process_runs_as_the_owner_of_the_output_folder(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    os.chown(outputs, 4242, 4343)
    r = run_image("sh", "-c", "id -u; id -g", volumes=[(outputs, "/work/outputs")])
    assert (r.returncode, r.stdout.split()) == (0, ["4242", "4343"]), r.stderr
    os.chown(outputs, 0, 0)  # a root-owned folder (the host user is root): stays root
    assert run_image("id", "-u", volumes=[(outputs, "/work/outputs")]).stdout.strip() == "0"
    # RUN_AS_OWNER_OF names another folder; without ./outputs, the working directory (root's in the image)
    os.chown(outputs, 4242, 4242)
    r = run_image("id", "-u", volumes=[(outputs, "/mnt")], env=["RUN_AS_OWNER_OF=/mnt"])
    assert r.stdout.strip() == "4242", r.stderr
    assert run_image("id", "-u").stdout.strip() == "0"


def test_an_explicit_user_is_kept():
    r = run_image("id", "-u", user="4242:4242")
    assert (r.returncode, r.stdout.strip()) == (0, "4242"), r.stderr


def test_read_only_root_without_a_tmpfs_fails_in_one_line():
    r = run_image("--epochs", "1", "--fake-data", "100", read_only=True)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: /tmp is not writable (read-only root filesystem?): mount a tmpfs there "
        "(docker run --tmpfs /tmp; compose: tmpfs: [/tmp])"
    ]


def container_state(name):
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name], capture_output=True, text=True
    ).stdout.split()


def wait_for_top(name, text, timeout=120):
    """`docker top` of container `name` once it shows `text` (polled: no guess at how fast it starts)."""
    deadline = time.monotonic() + timeout
    while True:
        top = subprocess.run(["docker", "top", name, "-o", "pid,args"], capture_output=True, text=True).stdout
        if text in top or time.monotonic() > deadline:
            return top
        time.sleep(0.2)


@pytest.mark.parametrize("variable", ["AZUREML_RUN_ID=local-run", "AZ_BATCHAI_CLUSTER_NAME=cpu-cluster"])
def test_no_command_in_an_azure_ml_run_idles_for_docker_exec_and_stops_at_once(variable):
    """A runtime that starts the container with no command and `docker exec`s the job (docs/runtime.md) must
    find it running, not training as PID 1; `docker stop` must end it by its trap, not by the SIGKILL after
    the grace period (exit 137)."""
    name = f"idle-{os.getpid()}-{variable.split('=')[0].lower()}"
    run = ["docker", "run", "-d", "--network", "none", "--name", name, "-e", variable, IMAGE]
    subprocess.run(run, check=True, capture_output=True)
    try:
        # `sleep infinity` runs once the entrypoint has decided: by then a trainer would have been exec'ed.
        top = wait_for_top(name, "sleep infinity")
        assert "train.py" not in top and "sleep infinity" in top, top
        assert container_state(name) == ["true", "0"]
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        assert logs.stdout == "" and len(logs.stderr.splitlines()) == 1 and "idling" in logs.stderr, logs
        job = subprocess.run(
            ["docker", "exec", "-w", "/tmp", name, "python", "-c", "print('job')"], capture_output=True
        )
        assert job.stdout == b"job\n", job.stderr
        subprocess.run(["docker", "stop", "--time", "60", name], check=True, capture_output=True)
        assert container_state(name) == ["false", "0"]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_no_command_outside_azure_ml_is_still_the_tutorials_run():
    """What the entrypoint execs, seen by a `python` first on PATH that prints its arguments: no race with a
    trainer that may already have exited (say, at once, where a DNS lookup fails fast)."""
    show = "mkdir /tmp/bin && printf '#!/bin/sh\\necho python \"$*\"\\n' >/tmp/bin/python && chmod 755 /tmp/bin/python"
    r = run_image("-c", f"{show} && PATH=/tmp/bin:$PATH /app/entrypoint.sh", entrypoint="sh")
    assert (r.returncode, r.stdout) == (0, "python /app/src/train.py\n"), r.stdout + r.stderr
