"""The README's commands one after another in one clone, as a new user runs them: each run ends
with its own complete results, and none of them touches another's (runs never cross)."""

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from ports import free_port

from e2e_env import ROOT, UID, build_labels, submit_env, tracked_copy

RESULTS = {"model.pt", "metrics.jsonl", "summary.json", "curves.png"}


def fingerprint(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_the_readmes_commands_in_order_each_keep_their_own_results(dirs, registry, tmp_path):
    """In a copy of the checkout: make submit registers its Environment in the clone's .azureml/."""
    (tmp_path / "azure-config").mkdir()
    clone = tracked_copy(tmp_path / "clone")
    env = {
        **submit_env(tmp_path, registry),
        **build_labels(),
        "DATA_DIR": str(dirs["data"]),
        "OUTPUTS_DIR": str(dirs["outputs"]),
        "CHECKPOINTS_DIR": str(dirs["checkpoints"]),
    }
    sequence = [
        ["make", "train", "EPOCHS=1", "ARGS=--fake-data 200"],
        ["make", "train-ddp", "EPOCHS=1", "PROCS=2", "ARGS=--fake-data 400"],
        ["make", "train-2node", "DDP_ARGS=--epochs 1 --fake-data 400 --batch-size 16"],
        ["make", "train", "MLFLOW=1", "EPOCHS=1", "ARGS=--fake-data 200"],  # no server up: one line, no harm
        ["make", "submit", "COMPUTE=local", f"REGISTRY={registry}", "TRAIN_ARGS=--epochs 1 --fake-data 64"],
    ]
    seen = {}
    for command in sequence:
        r = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, r.stderr
        (made,) = {p for p in dirs["outputs"].iterdir() if p.is_dir() and not p.is_symlink()} - seen.keys()
        assert RESULTS <= set(os.listdir(made)), (command, os.listdir(made))
        assert made.stat().st_uid == UID
        for folder, files in seen.items():  # every earlier run exactly as it was
            assert fingerprint(folder) == files, (command, folder)
        seen[made] = fingerprint(made)
    assert len(seen) == len(sequence)
    trained_here = [f.name for f in seen if f.name.startswith("run-")]
    assert sorted(p.name for p in dirs["checkpoints"].iterdir()) == sorted(trained_here)


def test_make_registry_serves_pushes_on_its_own_port(tmp_path):
    """The registry `make submit COMPUTE=local REGISTRY=...` needs, started the README's way, never on
    MLflow's port 5000; any small local image stands in for the trainer's."""
    port = str(free_port())
    env = {**os.environ, "REGISTRY_PORT": port, "COMPOSE_PROJECT_NAME": f"cifar10-registry-{os.getpid()}"}
    env["REGISTRY_CREDENTIALS"] = str(tmp_path / "logins")  # its logins, outside the checkout
    pushing = {**env, "DOCKER_CONFIG": str(tmp_path / "docker")}  # logged in as make registry says, here only
    small = subprocess.check_output(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], text=True)
    base = os.environ.get("BASE_IMAGE") or next(i for i in small.split() if not i.endswith(":<none>"))
    probe = f"127.0.0.1:{port}/probe:1"
    try:
        r = subprocess.run(["make", "registry"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and f"registry: 127.0.0.1:{port}" in r.stdout, r.stdout + r.stderr
        (login,) = [line.removeprefix("log in: ") for line in r.stdout.splitlines() if line.startswith("log in: ")]
        subprocess.run(["docker", "tag", base, probe], check=True)
        for _ in range(3):  # the registry may take a moment to listen
            logged_in = subprocess.run(["sh", "-c", login], cwd=ROOT, env=pushing, capture_output=True).returncode == 0
            if logged_in and subprocess.run(["docker", "push", "-q", probe], env=pushing).returncode == 0:
                break
            time.sleep(2)
        with pytest.raises(urllib.error.HTTPError, match="401"):  # as an ACR: no login, no answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/_catalog", timeout=10)
        auths = json.loads((tmp_path / "docker" / "config.json").read_text())["auths"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/_catalog")
        request.add_header("Authorization", f"Basic {auths[f'127.0.0.1:{port}']['auth']}")
        with urllib.request.urlopen(request, timeout=10) as catalog:
            assert json.load(catalog)["repositories"] == ["probe"]
    finally:
        subprocess.run(["docker", "image", "rm", probe], capture_output=True)
        down = ["docker", "compose", "--profile", "registry", "down", "-v"]
        subprocess.run(down, cwd=ROOT, env=env, capture_output=True, timeout=120)
