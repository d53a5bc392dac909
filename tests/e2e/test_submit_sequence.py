"""The first-time sequence of docs/azure.md on one build, rehearsed with COMPUTE=local: `make submit` (SDK v2),
then `make submit SDK=v1` (the tutorial's SDK), and the tutorial's part 4 (`make upload-data`, then
`make submit DATA_PATH=...`).
The local workspace keeps its environment registry across runs and answers as Azure ML does."""

import json
import os
import subprocess
import sys

import pytest

import datastore
import local_registry
import local_run
from e2e_env import copy_submit_tree, submit_env, submit_sh

FAST = "--epochs 1 --fake-data 64 --batch-size 8"
# The datastore through rehearsal/blobmount.py, run by this interpreter (its fusepy: tests/requirements-host.txt),
# where FUSE is here; else WHY_NO_FUSE says why not.
FUSE_PYTHON, WHY_NO_FUSE = local_run.fuse_python(sys.prefix)
BLOB_MOUNT = {"LOCAL_DATASTORE_MOUNT": "fuse", "HOST_VENV": sys.prefix} if FUSE_PYTHON else {}


@pytest.fixture(scope="module")
def worktree(tmp_path_factory):
    """One work tree for the whole sequence: its .azureml/ is the local workspace's registry."""
    return copy_submit_tree(tmp_path_factory.mktemp("sequence"), "outputs", "data")


def submit(worktree, registry, **env):
    """azure/submit.sh as `make submit COMPUTE=local` runs it; returns (result, the run's new outputs folders)."""
    before = set((worktree / "outputs").glob("local-*/summary.json"))  # each job's outputs/summary.json
    r = submit_sh(worktree, registry, timeout=900, COMPUTE="local", **env)
    return r, set((worktree / "outputs").glob("local-*/summary.json")) - before


def registered(worktree):
    return json.loads((worktree / ".azureml" / "local-environments.json").read_text())


def test_make_submit_then_sdk_v1_on_one_build_both_run(worktree, registry):
    # No SDK is v2, here as 2 nodes of 2 ranks each, started as Azure's defaults start them (the wrapper, root)
    for sdk, ranks in (({"NODES": "2", "PROCS_PER_NODE": "2"}, 4), ({"SDK": "v1"}, 1)):
        r, made = submit(worktree, registry, TRAIN_ARGS=FAST, **sdk)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert ("note: SDK v1 (azureml-core) is past its end of support" in r.stderr) == ("SDK" in sdk)
        assert len(made) == 1 and "timing: push" in r.stderr and ", training " in r.stderr
        assert "timing: check " in r.stderr  # the phases before the push, timed too
        assert "rehearsing: LOCAL_START=wrapper LOCAL_USER=root" in r.stderr
        assert json.loads(next(iter(made)).read_text())["world_size"] == ranks
    names = sorted(key.split(":")[0] for key in registered(worktree))
    assert names == ["cifar10-trainer", "cifar10-trainer-v2"]  # each SDK's definition, a name of its own
    r, _ = submit(worktree, registry, SDK="v1", TRAIN_ARGS=FAST)  # the same definition again: accepted
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def second_registry(registry):
    """Another registry, on the session registry's storage: another address (another definition), the same layers."""
    yield from local_registry.serve(f"cifar10-e2e-second-registry-{os.getpid()}", storage_of=local_registry.SESSION)


def test_the_same_build_pushed_to_a_second_registry_is_a_new_version_not_a_refusal(worktree, registry, second_registry):
    """The rehearsal's bug: REGISTRY=127.0.0.1:5001, then another port, one build. With the digest as the
    version, the second was 'already registered and cannot be changed'; so was another ACR on Azure."""
    before = set(registered(worktree))
    r, made = submit(worktree, second_registry, SDK="v2", TRAIN_ARGS=FAST)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (added,) = set(registered(worktree)) - before
    assert added.startswith("cifar10-trainer-v2:") and len(made) == 1


def test_a_changed_definition_under_a_registered_version_is_refused_as_azure_ml_does(worktree, registry):
    """Another definition under a registered name and version (by hand, or by an older version of this project)."""
    known = registered(worktree)
    (key,) = [k for k in known if k.startswith("cifar10-trainer:")]
    v2 = next(k for k in known if k.startswith("cifar10-trainer-v2:"))
    known[key] = known[v2]  # as if registered by something else: versions follow definitions here
    (worktree / ".azureml" / "local-environments.json").write_text(json.dumps(known))
    r, made = submit(worktree, registry, SDK="v1", TRAIN_ARGS=FAST)
    assert r.returncode == 1 and not made
    name, version = key.split(":")
    assert f"error: Environment {name} with version {version} is already registered and cannot be changed" in r.stderr
    (worktree / ".azureml" / "local-environments.json").unlink()


def test_upload_data_then_submit_with_data_path_as_the_tutorials_part_4(worktree, registry):
    (worktree / "data" / "cifar-10-python.tar.gz").write_bytes(b"stands in for the archive")
    env = submit_env(worktree, registry, COMPUTE="local")
    r = subprocess.run(
        ["bash", "azure/submit.sh", "upload-data"], cwd=worktree, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    # Uploaded as blobs to the datastore (Azurite), through azure-storage-blob
    assert datastore.listing("datasets/cifar10") == ["datasets/cifar10/cifar-10-python.tar.gz"]
    r, made = submit(worktree, registry, DATA_PATH="datasets/cifar10", TRAIN_ARGS=FAST, **BLOB_MOUNT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (summary,) = made
    assert "day1-experiment-data" in str(summary)  # part 4's experiment, as DATA_PATH implies
    # The named input mounted where its placeholder stood (${{inputs.cifar10}} in the default v2 job)
    assert json.loads(summary.read_text())["config"]["data_dir"] == "/mnt/azureml/data/cifar10"
    if not FUSE_PYTHON:  # the rest passed over bind mounts
        assert "datastore: downloaded and uploaded (no FUSE here: " in r.stderr, r.stderr[-3000:]
        pytest.skip(f"the named input through the blob mount: {WHY_NO_FUSE}")
    # Read through the blob mount, as Azure ML's ro_mount of the datastore, unmounted when the run ended
    assert "datastore: blob storage through FUSE (" in r.stderr, r.stderr[-3000:]
    assert not [line for line in open("/proc/self/mounts") if "azureml-datastore-" in line]
