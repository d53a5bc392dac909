"""The 2-node rehearsal: two containers on the compose network, one rank each, as Azure ML runs them."""

import json
import os
import re
import time

import pytest

import e2e_env
from e2e_env import compose_env

NODES = ("node0", "node1")
ARGS = "--epochs 1 --fake-data 8000 --batch-size 8 --log-interval 100 --checkpoint-every 200 --resume auto"


@pytest.fixture
def cluster(dirs, tmp_path):
    env = compose_env(dirs)
    project = f"cifar10-two-nodes-{os.getpid()}"

    def compose(*args, args_for_train=ARGS, check=True, timeout=600):
        ddp_env = {**env, "DDP_ARGS": args_for_train}
        return e2e_env.compose(ddp_env, "-p", project, "--profile", "ddp", *args, check=check, timeout=timeout)

    yield compose, tmp_path
    compose("down", "--timeout", "5", check=False)


def wait_for(compose, service, text, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in compose("logs", service).stdout:
            return
        time.sleep(0.5)
    raise AssertionError(f"{service} never printed {text!r}")


def exit_code(compose, service):
    return int(compose("ps", "-a", "--format", "{{.ExitCode}}", service).stdout.strip())


def test_two_containers_train_write_outputs_once_and_resume_after_both_stop(cluster):
    compose, root = cluster
    full = f"{ARGS} --output-dir outputs/full --checkpoint-dir checkpoints/full"
    r = compose("up", "--abort-on-container-exit", "--exit-code-from", "node0", *NODES, args_for_train=full)
    assert r.stdout.count("Finished Training") == 1 and "node0" in r.stdout
    reference = json.loads((root / "outputs" / "full" / "summary.json").read_text())
    assert reference["world_size"] == 2 and reference["image_ref"] == e2e_env.IMAGE  # `make compare` shows it
    names = [
        json.loads(line)["name"] for line in (root / "outputs" / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert names.count("loss") == 10  # 1000 steps / 100, logged once, not once per rank
    compose("rm", "-f", "-s")

    stopped = f"{ARGS} --output-dir outputs/stopped --checkpoint-dir checkpoints/stopped"
    compose("up", "-d", *NODES, args_for_train=stopped)
    wait_for(compose, "node0", "batch=  300:")
    compose("stop", "--timeout", "30", *NODES, args_for_train=stopped)  # SIGTERM to both, as a preemption would
    assert exit_code(compose, "node0") == 75 and exit_code(compose, "node1") == 75
    assert "checkpoint (SIGTERM)" in compose("logs", "node0").stdout
    assert not (root / "outputs" / "stopped" / "summary.json").exists()
    compose("rm", "-f", "-s")

    r = compose("up", "--abort-on-container-exit", "--exit-code-from", "node0", *NODES, args_for_train=stopped)
    assert re.search(r"resumed from checkpoints/stopped/stopped-[\w-]+/step-", r.stdout), r.stdout
    resumed = json.loads((root / "outputs" / "stopped" / "summary.json").read_text())
    assert resumed["weights_sha256"] == reference["weights_sha256"]


def test_killing_one_node_makes_the_other_exit_with_a_clear_error(cluster):
    compose, _ = cluster
    compose("up", "-d", *NODES, args_for_train=f"{ARGS} --dist-timeout 60")
    wait_for(compose, "node0", "batch=  100:")
    compose("kill", "node1")
    start = time.monotonic()
    while compose("ps", "--status", "running", "-q", "node0").stdout.strip():
        assert time.monotonic() - start < 90, "node0 is still running after its peer died"
        time.sleep(0.5)
    assert exit_code(compose, "node0") == 1
    assert (
        "error: rank 0 of 2 lost the other ranks" in compose("logs", "node0").stderr + compose("logs", "node0").stdout
    )


def test_torchrun_with_two_processes_in_one_container(cluster):
    compose, root = cluster
    r = compose(
        "run",
        "--rm",
        "train",
        "python",
        "/app/src/launch.py",
        "--standalone",
        "--nproc-per-node",
        "2",
        "/app/src/train.py",
        "--epochs",
        "1",
        "--fake-data",
        "800",
        "--batch-size",
        "8",
        "--log-interval",
        "50",
    )
    assert r.stdout.count("Finished Training") == 1 and r.stdout.count("epoch=1, batch=  100: loss") == 1
    assert json.loads((root / "outputs" / "latest" / "summary.json").read_text())["world_size"] == 2
