"""`make submit COMPUTE=local`: the very job the dry run prints, run with Docker the way AmlCompute
runs it, the image pulled by digest from a registry on 127.0.0.1. By default as Common Runtime starts it
(docs/runtime.md): an execution wrapper as PID 1 starts the job as root in a root-owned working directory,
and is preempted with SIGTERM, forwarded or not. The other plausible ways are run too: SDK v1 and v2, one
node and two, one rank per node and two (in one container), as the image's user, as root and as uid
9000, through the entrypoint, with the entrypoint bypassed and `docker exec`ed into an idle container,
with ./outputs made for the host user, for the job's user, or not at all."""

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

import datastore
import local_run
from e2e_env import IMAGE, ROOT, UID, copy_submit_tree, submit_env, submit_sh
from local_registry import get, tags

FAST = "--epochs 1 --fake-data 64 --batch-size 8"
DATA = "/mnt/azureml/data"  # where rehearsal/local_run.py mounts datastore folders
# The datastore through rehearsal/blobmount.py, run by this interpreter (its fusepy: tests/requirements-host.txt),
# where FUSE is here; else WHY_NO_FUSE says why not.
FUSE_PYTHON, WHY_NO_FUSE = local_run.fuse_python(sys.prefix)
BLOB_MOUNT = {"LOCAL_DATASTORE_MOUNT": "fuse", "HOST_VENV": sys.prefix} if FUSE_PYTHON else {}


@pytest.fixture(scope="module")
def worktree(tmp_path_factory):
    """A copy of what `make submit` reads, with an outputs folder owned by UID (so that, run as root, the
    entrypoint's drop to the owner of ./outputs is exercised too)."""
    tree = copy_submit_tree(tmp_path_factory.mktemp("worktree"), "outputs")
    os.chown(tree / "outputs", UID, UID)
    return tree


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
    return submit_env(worktree, registry, COMPUTE="local", **env)


def submit(worktree, registry, **env):
    """azure/submit.sh as `make submit` runs it; returns (result, the run's outputs folder or None)."""
    before = set((worktree / "outputs").iterdir())
    r = submit_sh(worktree, registry, timeout=900, COMPUTE="local", **env)
    (made,) = set((worktree / "outputs").iterdir()) - before or [None]
    return r, made


def dry_run(worktree, registry, **env):
    r = submit_sh(worktree, registry, COMPUTE="local", DRY_RUN="1", **env)
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


# The matrix (SDK x nodes x ranks per node x LOCAL_USER x LOCAL_START x LOCAL_OUTPUTS) is covered
# pairwise, not in full: user, start, shape and SDK follow an L9 orthogonal array (any two settings meet in
# some case), ./outputs is spread over it. Last: the uid that wrote ./outputs (UID: the entrypoint dropped
# to the owner of the host's folder; 0: root kept; 9000: the uid the job was started as).
CASES = [  # sdk, nodes, ranks per node, LOCAL_USER, LOCAL_START, LOCAL_OUTPUTS ("": its default), writer
    ("v1", 1, 1, "image", "entrypoint", "", UID),
    ("v2", 2, 1, "image", "bypass", "job", 0),
    ("v2", 1, 2, "image", "exec", "absent", 0),
    ("v2", 2, 1, "root", "entrypoint", "absent", 0),
    ("v1", 1, 2, "root", "bypass", "host", 0),
    ("v2", 1, 1, "root", "exec", "", 0),
    ("v2", 1, 2, "9000", "entrypoint", "", 9000),
    ("v2", 1, 1, "9000", "bypass", "", 9000),
    ("v1", 2, 2, "9000", "exec", "", 9000),
]
# uid 9000 cannot create the trainer's default ./checkpoints in a root-owned working directory: on Azure ML
# such a job needs CHECKPOINT_PATH (a datastore folder) or a --checkpoint-dir it can write, such as /tmp.
CHECKPOINTS_ELSEWHERE = " --checkpoint-dir /tmp/checkpoints"


def config_line(stdout):
    """The trainer's resolved configuration, from its `config: {...}` line (rank 0's)."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("config: "))[len("config: ") :])


@pytest.mark.parametrize(
    "sdk,nodes,procs,user,start,outputs_made,writer", CASES, ids=["-".join(map(str, c[:6])).strip("-") for c in CASES]
)
def test_the_dry_runs_job_runs_locally_and_records_the_pushed_digest(
    worktree, registry, pushed, sdk, nodes, procs, user, start, outputs_made, writer
):
    train_args = FAST + (CHECKPOINTS_ELSEWHERE if user.isdigit() else "")
    env = {"SDK": sdk, "NODES": str(nodes), "PROCS_PER_NODE": str(procs), "TRAIN_ARGS": train_args}
    env |= {"LOCAL_USER": user, "LOCAL_START": start, **({"LOCAL_OUTPUTS": outputs_made} if outputs_made else {})}
    r, outputs = submit(worktree, registry, **env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert outputs is not None and outputs.name.startswith("local-day1-experiment-train_")
    summary_file = outputs / "summary.json"  # in an Azure ML job the run is ./outputs itself, no folder below
    summary = json.loads(summary_file.read_text())
    assert summary["image_ref"] == f"{registry}/cifar10-trainer@{pushed}"  # by digest alone, as registered
    assert summary["world_size"] == nodes * procs
    assert_ran_with(summary["config"], trainer_args(dry_run(worktree, registry, **env)))
    assert "timing: push" in r.stderr and ", training " in r.stderr
    assert f"./outputs written as uid {writer}\n" in r.stderr, r.stderr
    if nodes * procs > 1:  # one container per node: its ranks share a hostname, as on Azure ML
        assert config_line(r.stdout)["ranks_on_node"] == procs


def test_a_uid_without_a_writable_outputs_folder_stops_in_one_line(worktree, registry, pushed):
    """uid 9000 over a root-owned working directory with no ./outputs made for it: the trainer cannot create
    one, and says so in one line (exit 1) instead of training into nothing."""
    env = {"TRAIN_ARGS": FAST + CHECKPOINTS_ELSEWHERE, "LOCAL_START": "bypass", "LOCAL_OUTPUTS": "absent"}
    r, outputs = submit(worktree, registry, LOCAL_USER="9000", **env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    errors = [line for line in r.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "outputs" in errors[0] and "--output-dir" in errors[0], r.stdout[-3000:]
    assert "Traceback" not in r.stdout and not list(outputs.rglob("summary.json"))


@pytest.mark.parametrize(
    "setting,error",
    [
        ("LOCAL_START=attach", "use wrapper (the default), entrypoint, bypass or exec"),
        ("LOCAL_DATASTORE_MOUNT=blob", "use fuse or copy (unset: FUSE where it can)"),
    ],
)
def test_the_rehearsals_settings_are_checked_before_anything_starts(worktree, setting, error):
    name, value = setting.split("=")
    r = subprocess.run(
        ["python3", "rehearsal/local_run.py", "plan.json"],
        cwd=worktree,
        env={**environment(worktree, "unused"), name: value},
        input="",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr == f"error: {setting}: {error}\n"


def test_a_datastore_forced_through_fuse_where_there_is_none_stops_in_one_line(worktree, tmp_path):
    if subprocess.run(["python3", "-c", "import fuse"], capture_output=True).returncode == 0:
        pytest.skip("the host's python3 imports fusepy itself: LOCAL_DATASTORE_MOUNT=fuse may find FUSE here")
    uri = "azureml://datastores/workspaceblobstore/paths/ck"
    job = {
        "environment": {"image": "unused"},
        "component": {"command": "python train.py --checkpoint-dir ${{outputs.ck}}"},
        "resources": {"shm_size": "2g"},
        "outputs": {"ck": {"mode": "rw_mount", "path": uri}},
    }
    (tmp_path / "plan.json").write_text(json.dumps({"sdk": "v2", "experiment_name": "day1-experiment", "job": job}))
    r = subprocess.run(
        ["python3", "rehearsal/local_run.py", str(tmp_path / "plan.json")],
        cwd=worktree,
        env={**environment(worktree, "unused"), "LOCAL_DATASTORE_MOUNT": "fuse", "HOST_VENV": str(tmp_path)},
        input="",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error: LOCAL_DATASTORE_MOUNT=fuse: no FUSE here: ") and r.stderr.count("\n") == 1


# Test harness only: torchvision checks the real CIFAR-10's md5s; the fixture's own are expected instead.
HARNESS = """from torchvision import datasets
from cifar_fixture import expect_checksums
expect_checksums(datasets.CIFAR10, {sums!r})
"""


def archive_only(tmp_path, name):
    """<name>/ on the datastore holding only a small cifar-10-python.tar.gz (made in the image: numpy), uploaded
    through rehearsal/datastore.py as make upload-data uploads."""
    folder = tmp_path / name
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
    assert datastore.put([folder / "cifar-10-python.tar.gz"], name) == [f"{name}/cifar-10-python.tar.gz"]
    return json.loads(out)


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_a_folder_with_only_the_archive_is_read_and_nothing_is_written_back(worktree, registry, pushed, tmp_path, sdk):
    """v2 mounts DATA_PATH read-only (ro_mount), v1 writable: in both the trainer must extract the
    archive elsewhere, and the datastore keeps only what was uploaded."""
    name = f"cifar-{sdk}"
    sums = archive_only(tmp_path, name)
    env = {"SDK": sdk, "DATA_PATH": name, "TRAIN_ARGS": "--epochs 1 --batch-size 8"}
    plan = dry_run(worktree, registry, **env)
    assert sdk == "v1" or plan["job"]["inputs"]["cifar10"]["mode"] == "ro_mount"
    # The harness rides in the snapshot, imported at start-up through PYTHONPATH: the job is otherwise the dry run's.
    harness = tmp_path / "snapshot"
    shutil.copytree(worktree / plan["snapshot"]["source_directory"], harness)
    (harness / "sitecustomize.py").write_text(HARNESS.format(sums=sums))
    shutil.copy(ROOT / "tests" / "cifar_fixture.py", harness)
    added = ["sitecustomize.py", "cifar_fixture.py"]
    plan["snapshot"] |= {"source_directory": str(harness), "paths": [*plan["snapshot"]["paths"], *added]}
    variables = (
        plan["runConfiguration"]["environmentVariables"] if sdk == "v1" else plan["job"]["environment_variables"]
    )
    variables["PYTHONPATH"] = f"/mnt/azureml/cr/j/archive-only-{sdk}/exe/wd"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    r = subprocess.run(
        ["python3", "rehearsal/local_run.py", str(tmp_path / "plan.json")],
        cwd=worktree,
        env=environment(worktree, registry, LOCAL_RUN_ID=f"archive-only-{sdk}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert datastore.listing(name) == [f"{name}/cifar-10-python.tar.gz"]


def test_the_rehearsal_reads_mounts_and_ranks_from_the_serialized_v2_job(worktree, registry, pushed):
    import local_run

    plan = dry_run(worktree, registry, SDK="v2", NODES="2", DATA_PATH="data", CHECKPOINT_PATH="ck/run-1")
    job = local_run.job_v2(plan)
    assert job["mounts"] == {
        "cifar10": ("data", True, "${{inputs.cifar10}}"),
        "checkpoints": ("ck/run-1", False, "${{outputs.checkpoints}}"),
    }
    assert (job["nodes"], job["processes"]) == (2, 2) and job["image"].endswith("@" + pushed)
    # Azure ML's PyTorch distribution sets these on each process; LOCAL_WORLD_SIZE is not among them, and
    # MASTER_PORT is the trainer's default
    assert local_run.rank_variables(job, 1, "node-0") == {
        "MASTER_ADDR": "node-0",
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


@pytest.mark.parametrize(
    "env,wd_owner,outputs_owner",
    [
        ({}, (0, 0), (0, 0)),  # as Common Runtime: root's, ./outputs made by the platform
        (
            {"LOCAL_USER": "image"},
            (4242, 4343),
            (4242, 4343),
        ),  # a laptop's folders: the entrypoint drops to their owner
        ({"LOCAL_USER": "root"}, (0, 0), (0, 0)),
        ({"LOCAL_USER": "9000"}, (0, 0), (9000, 9000)),  # uid 9000 over a root-owned working directory
        ({"LOCAL_USER": "9000", "LOCAL_OUTPUTS": "absent"}, (0, 0), None),
        ({"LOCAL_OUTPUTS": "job"}, (0, 0), (0, 0)),
    ],
)
def test_the_working_directory_is_owned_as_the_settings_say(monkeypatch, env, wd_owner, outputs_owner):
    import local_run

    for name in ("LOCAL_START", "LOCAL_USER", "LOCAL_OUTPUTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    snapshot = {"source_directory": str(ROOT / "src"), "paths": ["train.py"]}
    owners = local_run.owners(local_run.settings(), (4242, 4343))
    with tarfile.open(fileobj=io.BytesIO(local_run.staging(snapshot, "run-1", *owners))) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar.getmembers()}
        wrapper = tar.getmember("azureml/cr/j/run-1/cap/lifecycler/wd/execution-wrapper")
    wd = "azureml/cr/j/run-1/exe/wd"
    expected = {wd: wd_owner, f"{wd}/train.py": wd_owner} | ({f"{wd}/outputs": outputs_owner} if outputs_owner else {})
    assert {k: v for k, v in owners.items() if k.startswith(wd)} == expected
    # Everything above the working directory is the platform's, the wrapper too (executable, not writable)
    assert {v for k, v in owners.items() if not k.startswith(wd)} == {(0, 0)} and wrapper.mode == 0o755


def test_a_nodes_launcher_starts_each_rank_and_fails_when_one_fails():
    import local_run

    def launch(rank_command, node_rank):
        argv = ["sh", "-c", local_run.LAUNCHER, "launcher", "2", "sh", "-c", rank_command]
        return subprocess.run(
            argv, env={"NODE_RANK": node_rank, "PATH": os.environ["PATH"]}, capture_output=True, text=True
        )

    r = launch('echo "$RANK/$LOCAL_RANK"', "1")
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["2/0", "3/1"]
    assert launch('exit "$LOCAL_RANK"', "0").returncode == 1  # rank 1 failed: so does the node


PROBE = (
    'tr "\\0" " " </proc/1/cmdline; echo; pwd; id -u; stat -c %u . outputs; command -v python; echo "$PYTHONUNBUFFERED"'
)


def test_the_execution_wrapper_is_pid_1_and_starts_the_job_as_root_in_the_platforms_folder(tmp_path):
    """As Common Runtime: not python, not the image's ENTRYPOINT; the image's ENV reaches it and the job."""
    import local_run

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("")
    staged = local_run.staging(
        {"source_directory": str(tmp_path / "src"), "paths": ["train.py"]}, "run-1", (0, 0), (0, 0)
    )
    name = f"cifar10-e2e-wrapper-{os.getpid()}"
    wd = local_run.workdir("run-1")
    docker = ["docker", "create", "--name", name, "--user", "0:0", "--entrypoint", local_run.wrapper_path("run-1")]
    subprocess.run([*docker, IMAGE, "kill", "30", wd, "sh", "-c", PROBE], check=True, capture_output=True)
    try:
        subprocess.run(["docker", "cp", "-", f"{name}:/mnt"], input=staged, check=True)
        r = subprocess.run(["docker", "start", "--attach", name], capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert r.returncode == 0, r.stderr
    pid1, cwd, uid, wd_owner, outputs_owner, python, unbuffered = r.stdout.splitlines()
    assert pid1.split()[:2] == ["/bin/sh", local_run.wrapper_path("run-1")]  # a script, run by the image's /bin/sh
    assert (cwd, uid, wd_owner, outputs_owner) == (wd, "0", "0", "0")
    assert (python, unbuffered) == ("/opt/venv/bin/python", "1")  # image ENV: PATH and PYTHONUNBUFFERED


# Small enough to be quick, long enough (100 steps, a checkpoint every 20) that a SIGTERM sent at the
# first checkpoint arrives mid-training; the first start's exit status proves it did.
PREEMPTIBLE = "--fake-data 400 --epochs 1 --threads 1 --checkpoint-every 20"


def start(worktree, registry, plan, run_id, preempt=False, **env):
    """One start of the run `run_id` (rehearsal/local_run.py on the dry run's plan); with preempt, node 0's container
    gets SIGTERM (`docker kill --signal TERM`, as a preemption) when the trainer prints its first checkpoint.
    Returns (exit status, output, the run's summary.json or None)."""
    p = subprocess.Popen(
        ["python3", "rehearsal/local_run.py", str(plan)],
        cwd=worktree,
        env=environment(worktree, registry, LOCAL_RUN_ID=run_id, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in p.stdout:
        lines.append(line)
        if preempt and line.startswith("checkpoint (interval): "):
            subprocess.run(["docker", "kill", "--signal", "TERM", f"azureml-{run_id}-0".lower()], check=True)
            preempt = False
    code = p.wait(timeout=600)
    found = worktree / "outputs" / f"local-{run_id}" / "summary.json"  # the job's outputs/summary.json
    return code, "".join(lines), json.loads(found.read_text()) if found.is_file() else None


@pytest.fixture(scope="module")
def preemptible(worktree, registry, pushed, tmp_path_factory):
    """The dry run's job with CHECKPOINT_PATH (where a restarted job resumes), and an uninterrupted run's weights."""
    plan = tmp_path_factory.mktemp("preempt") / "plan.json"
    job = dry_run(worktree, registry, SDK="v2", CHECKPOINT_PATH="ck", TRAIN_ARGS=PREEMPTIBLE)
    plan.write_text(json.dumps(job))
    # Checkpoints downloaded and uploaded here; the preempted runs checkpoint through the blob mount where FUSE is here
    code, out, summary = start(worktree, registry, plan, f"uninterrupted-{os.getpid()}", LOCAL_DATASTORE_MOUNT="copy")
    assert code == 0 and summary, out[-3000:]
    assert "datastore: downloaded and uploaded (LOCAL_DATASTORE_MOUNT=copy)" in out
    assert "rehearsing: LOCAL_START=wrapper LOCAL_USER=root LOCAL_OUTPUTS=job LOCAL_SIGTERM=kill" in out
    assert "./outputs written as uid 0\n" in out
    return plan, summary["weights_sha256"]


@pytest.mark.parametrize(
    "sigterm,grace,first_exit",
    [
        ("forward", "600", 75),  # the trainer checkpoints at its next step and exits 75, long before the grace
        ("kill", "0", 128 + 9),  # never told: SIGKILLed where it stands, once the grace is over
    ],
)
def test_a_preempted_job_restarted_with_its_run_id_resumes_exactly(
    worktree, registry, preemptible, sigterm, grace, first_exit
):
    plan, weights = preemptible
    run_id = f"preempted-{sigterm}-{os.getpid()}"
    signals = {"LOCAL_SIGTERM": sigterm, "LOCAL_GRACE": grace}
    code, first, summary = start(worktree, registry, plan, run_id, preempt=True, **signals, **BLOB_MOUNT)
    assert code == first_exit and summary is None, first[-3000:]
    assert ("stopped by SIGTERM" in first) == (sigterm == "forward"), first[-3000:]
    code, out, summary = start(worktree, registry, plan, run_id, **BLOB_MOUNT)
    assert code == 0 and summary, out[-3000:]
    assert "resumed from " in out
    assert summary["weights_sha256"] == weights
    if not FUSE_PYTHON:  # the rest passed over bind mounts
        pytest.skip(f"checkpoints through the blob mount: {WHY_NO_FUSE}")
    # Both starts checkpointed through the blob mount: written in place, as renames are refused there
    for said in (first, out):
        assert "datastore: blob storage through FUSE (" in said, said[-3000:]
        assert f"note: {DATA}/checkpoints/{run_id}/ refuses renames (Operation not supported; " in said, said[-3000:]


def test_the_registry_asks_for_a_login_as_an_acr_does(registry):
    assert get(registry, "", login=False).status == 401
    assert get(registry, "").status == 200


# What the rehearsal's workspace says Azure holds (.azureml/local-resources.json, AZURE_RESOURCES' shape).
REGISTRY_ID = "/subscriptions/0/resourceGroups/local/providers/Microsoft.ContainerRegistry/registries/local"
PRINCIPAL = "11111111-2222-3333-4444-555555555555"
ROLE = "/providers/Microsoft.Authorization/roleDefinitions/7f951dda-4ed3-4680-a7ca-43fe172d538d"  # AcrPull
ACR_PULL = {"properties": {"roleDefinitionId": ROLE, "principalId": PRINCIPAL}}


def azure_holds(admin=False, identity=False, roles=()):
    compute = {"properties": {"computeType": "AmlCompute", "properties": {}}}
    compute["identity"] = {"type": "SystemAssigned", "principalId": PRINCIPAL} if identity else {"type": "None"}
    registry = {"id": REGISTRY_ID, "name": "local", "properties": {"adminUserEnabled": admin}}
    return {"registry": registry, "compute": compute, "roleAssignments": list(roles)}


def test_a_cluster_that_cannot_authenticate_fails_at_the_pull_as_on_azure_and_pulls_once_given_an_identity(
    registry, pushed, tmp_path
):
    """The registry's admin user off and a cluster without identity: the job fails at the pull with Azure ML's
    own words, nothing pushed is lost; the same workspace once its cluster has an identity with AcrPull pulls."""
    tree = copy_submit_tree(tmp_path, "outputs")
    workspace = tree / ".azureml" / "local-resources.json"
    workspace.write_text(json.dumps(azure_holds()))
    env = {"COMPUTE": "local", "TRAIN_ARGS": FAST}
    r = submit_sh(tree, registry, timeout=900, **env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    image = f"{registry}/cifar10-trainer@{pushed}"
    assert line.startswith(f"error: Failed to pull Docker image {image}. This error may occur because the compute")
    assert "ensure the ACR has Admin user enabled or a Managed Identity with `AcrPull` access to the ACR" in line
    assert "(registry: unauthorized: authentication required; " in line and "adminUserEnabled" in line, line
    assert not list((tree / "outputs").rglob("summary.json"))  # no container ran
    assert get(registry, f"cifar10-trainer/manifests/{pushed}").status == 200 and tags(registry)  # nothing lost

    workspace.write_text(json.dumps(azure_holds(identity=True, roles=[ACR_PULL])))
    r = submit_sh(tree, registry, timeout=900, **env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (summary,) = (tree / "outputs").glob("local-*/summary.json")  # the job's outputs/summary.json
    assert json.loads(summary.read_text())["image_ref"] == image


def test_the_rehearsal_pulls_only_with_what_azure_would_give_the_cluster(tmp_path, monkeypatch):
    """The admin user if it is on, else the cluster's identity's token if it holds AcrPull, else nothing."""
    import local_workspace

    monkeypatch.setenv("REGISTRY_CREDENTIALS", str(tmp_path / "logins"))
    logins = local_workspace.registry_logins(create=True)
    token = (local_workspace.TOKEN_USER, logins[local_workspace.TOKEN_USER])
    assert local_workspace.pull_login(azure_holds(admin=True)) == ("local", logins["local"])
    assert local_workspace.pull_login(azure_holds(identity=True, roles=[ACR_PULL])) == token
    assert local_workspace.pull_login(azure_holds(identity=True)) is None  # an identity without AcrPull
    assert local_workspace.pull_login(azure_holds(roles=[ACR_PULL])) is None  # a role, but no identity holds it
    assert local_workspace.pull_login(azure_holds()) is None
    monkeypatch.chdir(tmp_path)  # what make submit creates: a system-assigned identity with AcrPull
    assert local_workspace.pull_login(local_workspace.resources()) == token
    assert local_workspace.resources() == json.loads((tmp_path / ".azureml" / "local-resources.json").read_text())
