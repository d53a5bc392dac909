"""`make submit COMPUTE=local`: the very job the dry run prints, run with Docker the way AmlCompute
runs it, the image pulled by digest from a registry on 127.0.0.1; both SDKs, one node and two, as
the image's own user, as root, and with the image's entrypoint bypassed (which one Azure ML does is
not documented: each must work)."""

import json
import os
import shlex
import shutil
import subprocess

import pytest

from e2e_env import IMAGE, ROOT, copy_submit_tree, submit_env, submit_sh

FAST = "--epochs 1 --fake-data 64 --batch-size 8"
DATA = "/mnt/azureml/data"  # where azure/local_run.py mounts datastore folders


@pytest.fixture(scope="module")
def worktree(tmp_path_factory):
    """A copy of what `make submit` reads, with an outputs folder and a datastore folder."""
    return copy_submit_tree(tmp_path_factory.mktemp("worktree"), "outputs", "datastore")


@pytest.fixture(scope="module")
def pushed(worktree, registry):
    """The image pushed once (what `make submit` pushes first); the digest it got."""
    ref = subprocess.run(
        ["bash", "azure/publish.sh", IMAGE, registry], cwd=worktree, check=True, capture_output=True, text=True
    ).stdout.strip()
    yield ref.split("@")[1]
    # Untag what the pushes and pulls added here (the layers stay: they are IMAGE's)
    refs = subprocess.run(
        ["docker", "image", "ls", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    mine = {r for r in refs if r.startswith(f"{registry}/") and not r.endswith("<none>")}
    subprocess.run(["docker", "image", "rm", *mine], capture_output=True)


def environment(worktree, registry, **env):
    return submit_env(worktree, registry, COMPUTE="local", LOCAL_DATASTORE=str(worktree / "datastore"), **env)


def submit(worktree, registry, **env):
    """azure/submit.sh as `make submit` runs it; returns (result, the run's outputs folder or None)."""
    before = set((worktree / "outputs").iterdir())
    r = submit_sh(worktree, registry, timeout=900, COMPUTE="local", LOCAL_DATASTORE=str(worktree / "datastore"), **env)
    (made,) = set((worktree / "outputs").iterdir()) - before or [None]
    return r, made


def dry_run(worktree, registry, **env):
    r = submit_sh(worktree, registry, COMPUTE="local", LOCAL_DATASTORE=str(worktree / "datastore"), DRY_RUN="1", **env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout[r.stdout.index("{") :])


def trainer_args(plan):
    """The arguments after train.py, as the SDK serialized them, with mount placeholders resolved."""
    if plan["sdk"] == "v1":
        args = plan["runConfiguration"]["arguments"]
    else:
        command = shlex.split(plan["job"]["component"]["command"])
        args = command[command.index("train.py") + 1 :]
    resolve = {f"$AZUREML_DATAREFERENCE_{n}": f"{DATA}/{n}" for n in ("cifar10", "checkpoints")}
    resolve |= {f"${{{{{k}.{n}}}}}": f"{DATA}/{n}" for k, n in (("inputs", "cifar10"), ("outputs", "checkpoints"))}
    return [resolve.get(a, a) for a in args]


def assert_ran_with(config, args):
    """Every flag of the dry run reached train.py with its value (summary.json's config)."""
    flags = [a for a in args if a.startswith("--")]
    assert flags, args
    for i, a in enumerate(args):
        if a.startswith("--"):
            key = a[2:].replace("-", "_")
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
            assert str(config[key]) == str(value), (key, config[key], value)


@pytest.mark.parametrize("user", ["image", "root"])
@pytest.mark.parametrize("sdk,nodes", [("v1", 1), ("v2", 1), ("v1", 2), ("v2", 2)])
def test_the_dry_runs_job_runs_locally_and_records_the_pushed_digest(worktree, registry, pushed, sdk, nodes, user):
    env = {"SDK": sdk, "NODES": str(nodes), "TRAIN_ARGS": FAST, **({"LOCAL_USER": "root"} if user == "root" else {})}
    r, outputs = submit(worktree, registry, **env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert outputs is not None and outputs.name.startswith("local-day1-experiment-train_")
    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["image_ref"].startswith(f"{registry}/cifar10-trainer:")
    assert summary["image_ref"].endswith("@" + pushed)
    assert summary["world_size"] == nodes
    assert_ran_with(summary["config"], trainer_args(dry_run(worktree, registry, **env)))
    assert "timing: push" in r.stderr and ", training " in r.stderr


@pytest.mark.parametrize("sdk,nodes", [("v1", 1), ("v2", 2)])
def test_the_job_also_runs_with_the_images_entrypoint_bypassed(worktree, registry, pushed, sdk, nodes):
    r, outputs = submit(worktree, registry, SDK=sdk, NODES=str(nodes), TRAIN_ARGS=FAST, LOCAL_ENTRYPOINT="bypass")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((outputs / "summary.json").read_text())["world_size"] == nodes


HARNESS = """# Test harness only: torchvision checks the real CIFAR-10's md5s; expect the fixture's instead.
from torchvision import datasets
sums = {sums!r}
datasets.CIFAR10.train_list = [[f"data_batch_{{i}}", sums[f"data_batch_{{i}}"]] for i in range(1, 6)]
datasets.CIFAR10.test_list = [["test_batch", sums["test_batch"]]]
datasets.CIFAR10.meta = {{**datasets.CIFAR10.meta, "md5": sums["batches.meta"]}}
datasets.CIFAR10.tgz_md5 = sums["cifar-10-python.tar.gz"]
"""


def archive_only(worktree, name):
    """datastore/<name> holding only a small cifar-10-python.tar.gz (made in the image: numpy)."""
    folder = worktree / "datastore" / name
    folder.mkdir()
    code = "import json, sys; sys.path.insert(0, '/t'); from cifar_fixture import write_cifar10; "
    code += "print(json.dumps(write_cifar10('/d', per_batch=20, archive=True)))"
    out = subprocess.check_output(
        ["docker", "run", "--rm", "--user", "0:0", "--entrypoint", "python", "-v", f"{ROOT / 'tests'}:/t:ro"]
        + ["-v", f"{folder}:/d", IMAGE, "-c", code],
        text=True,
    )
    subprocess.run(
        ["docker", "run", "--rm", "--user", "0:0", "--entrypoint", "chown", "-v", f"{folder}:/d", IMAGE]
        + ["-R", f"{os.getuid()}:{os.getgid()}", "/d"],
        check=True,
    )
    return folder, json.loads(out)


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_a_folder_with_only_the_archive_is_read_and_nothing_is_written_back(worktree, registry, pushed, tmp_path, sdk):
    """v2 mounts DATA_PATH read-only (ro_mount), v1 writable: in both the trainer must extract the
    archive elsewhere, and the datastore keeps only what was uploaded."""
    folder, sums = archive_only(worktree, f"cifar-{sdk}")
    env = {"SDK": sdk, "DATA_PATH": folder.name, "TRAIN_ARGS": "--epochs 1 --batch-size 8"}
    plan = dry_run(worktree, registry, **env)
    assert sdk == "v1" or plan["job"]["inputs"]["cifar10"]["mode"] == "ro_mount"
    # The harness rides in the snapshot, imported at start-up through PYTHONPATH: the job is otherwise the dry run's.
    harness = tmp_path / "snapshot"
    shutil.copytree(worktree / plan["snapshot"]["source_directory"], harness)
    (harness / "sitecustomize.py").write_text(HARNESS.format(sums=sums))
    plan["snapshot"] |= {"source_directory": str(harness), "paths": [*plan["snapshot"]["paths"], "sitecustomize.py"]}
    variables = (
        plan["runConfiguration"]["environmentVariables"] if sdk == "v1" else plan["job"]["environment_variables"]
    )
    variables["PYTHONPATH"] = "/mnt/azureml/wd"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    r = subprocess.run(
        ["python3", "azure/local_run.py", str(tmp_path / "plan.json")],
        cwd=worktree,
        env=environment(worktree, registry),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-python.tar.gz"]


def test_the_rehearsal_reads_mounts_and_ranks_from_the_serialized_v2_job(worktree, registry, pushed):
    import local_run

    plan = dry_run(worktree, registry, SDK="v2", NODES="2", DATA_PATH="data", CHECKPOINT_PATH="ck/run-1")
    job = local_run.job_v2(plan)
    assert job["mounts"] == {
        "cifar10": ("data", True, "${{inputs.cifar10}}"),
        "checkpoints": ("ck/run-1", False, "${{outputs.checkpoints}}"),
    }
    assert (job["nodes"], job["processes"]) == (2, 2) and job["image"].endswith("@" + pushed)
    # Azure ML's PyTorch distribution sets these on each process; LOCAL_WORLD_SIZE is not among them
    assert local_run.rank_variables(job, 1, "node-0") == {
        "MASTER_ADDR": "node-0",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "0",
        "NODE_RANK": "1",
    }


def test_compute_local_without_a_registry_is_one_clear_error_before_any_push(worktree):
    r = subprocess.run(
        ["bash", "azure/submit.sh"],
        cwd=worktree,
        env={k: v for k, v in environment(worktree, "unused").items() if k != "REGISTRY"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and "COMPUTE=local pulls the image by digest from a registry: set REGISTRY=" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line, before any container starts
