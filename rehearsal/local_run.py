"""`make submit COMPUTE=local`: run the job a dry run printed, with Docker, the way AmlCompute runs it.

    python3 rehearsal/local_run.py PLAN.json      # PLAN.json: `submit.py run --dry-run` (SDK v1 or v2)

Reads the job only from the SDK's own serialization in PLAN.json (v1 runConfiguration, v2 command
job), never from make's variables: the image by digest, pulled from its registry with only the
login Azure would give the cluster (pull); the snapshot
(src/ after .amlignore, as listed in the plan) copied into each node's working directory; the
interpreter, script and arguments with $AZUREML_DATAREFERENCE_<name>, ${{inputs.<name>}} and
${{outputs.<name>}} replaced by mount paths; datastore folders mounted (read-only for ro_mount); the
job's environment variables, shm size and docker arguments; the variables Azure ML sets for a run;
one container per node (all of its ranks inside, one hostname) on one docker network, each process
with MASTER_ADDR, WORLD_SIZE, RANK, LOCAL_RANK and NODE_RANK. When the job ends, node
0's ./outputs is copied out, as Azure ML uploads it.

By default the job starts as Azure ML's Common Runtime starts it (docs/runtime.md, "How Azure ML may start it"):
a stand-in execution-wrapper (rehearsal/execution-wrapper.sh, not python, not the image's ENTRYPOINT) is PID 1 at
/mnt/azureml/cr/j/<run id>/cap/lifecycler/wd/execution-wrapper and starts the command as root in
/mnt/azureml/cr/j/<run id>/exe/wd, a root-owned folder whose ./outputs the platform made. The other ways are the
tests' parameters (tests/e2e/test_submit_local.py runs each; a user needs none of them), one variable for each:
  LOCAL_START=wrapper (default); entrypoint: the image's entrypoint gets the command; bypass: the interpreter
    is the entrypoint; exec: the container starts with no command (the entrypoint idles) and each rank is
    `docker exec`ed into it.
  LOCAL_USER=root (default, --user 0:0); image (no --user: root, and the entrypoint drops to the owner of
    ./outputs); a uid such as 9000 (--user 9000:9000, as Azure ML's Singularity compute runs jobs).
  LOCAL_OUTPUTS=job (default; host with LOCAL_USER=image): the working directory is root's and ./outputs the
    job user's, as a platform makes them; host: both belong to OUTPUTS_DIR's owner, as compose mounts a
    laptop's folders; absent: the working directory is root's and there is no ./outputs (the trainer creates
    it, or says in one line why it cannot).
  LOCAL_SIGTERM=kill (default) or forward, LOCAL_GRACE=30 (seconds): what the wrapper does with a SIGTERM
    (`docker kill --signal TERM` on a node's container: a preemption): pass it on to the job or not; a job
    still running LOCAL_GRACE seconds later is SIGKILLed (30: Kubernetes' default grace period).
  LOCAL_RUN_ID: start the run of that id again, as a preempted job restarts with its run id (the trainer
    resumes from CHECKPOINT_PATH); its ./outputs lands over the first start's.
Also: the datastore is blob storage, Azurite (rehearsal/datastore.py; LOCAL_DATASTORE names it), which
`make upload-data COMPUTE=local` uploads to, so DATA_PATH=datasets/cifar10 mounts what it uploaded. Azure ML mounts
a datastore through FUSE, so where it can (root, /dev/fuse, and an interpreter that imports fusepy over libfuse2 and
azure-storage-blob: HOST_VENV's, default .venv-host, or this one) the rehearsal mounts it through
rehearsal/blobmount.py for the run (over the blob API: renames refused, folders only name prefixes) and the job's
datastore folders are bind mounts of that mount; elsewhere each folder is downloaded before the run and, if
written to, uploaded after it (Azure ML's download and upload modes). One stderr line says which
("datastore: ..."). LOCAL_DATASTORE_MOUNT, a test's parameter: fuse (stop in one line where FUSE is not here)
or copy. OUTPUTS_DIR (default ./outputs): the run's ./outputs lands in OUTPUTS_DIR/local-<run id>/,
owned by OUTPUTS_DIR's owner, like a downloaded run. The trackers' services are a local stand-in
(rehearsal/standin.py, in IMAGE_MLFLOW): what they received lands in the run's outputs as tracker.json.
Standard library only: it runs on the host, beside Docker. Timings go to stderr.
"""

import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from io import BytesIO
from pathlib import Path, PurePosixPath

import datastore
import local_workspace
import mlflow_front
import standin

WRAPPER = Path(__file__).with_name("execution-wrapper.sh")
BLOBMOUNT = Path(__file__).with_name("blobmount.py")
MOUNT_SECONDS = 30  # how long blobmount.py may take to mount, and to exit once unmounted
DATA = "/mnt/azureml/data"  # where datastore folders are mounted
# Set by Azure ML for every run; azureml-core's Run.get_context() reads them (azureml/core/run.py,
# Run._load_scope). AZUREML_RUN_TOKEN and the service endpoints come from the tracking stand-in.
WORKSPACE = {
    "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000000",
    "AZUREML_ARM_RESOURCEGROUP": "local",
    "AZUREML_ARM_WORKSPACE_NAME": "local",
}
# A node's ranks, all started inside its one container (LOCAL_START=entrypoint or bypass with
# PROCS_PER_NODE > 1), as Azure ML's runtime starts process_count_per_instance processes on a node.
# $1: the number of ranks; NODE_RANK comes from the container. The first failure is the exit code.
LAUNCHER = """n=$1; shift; pids=
for i in $(seq 0 $((n - 1))); do RANK=$((NODE_RANK * n + i)) LOCAL_RANK=$i "$@" & pids="$pids $!"; done
trap 'kill $pids 2>/dev/null' TERM INT
code=0
for p in $pids; do wait "$p" || { c=$?; [ "$code" != 0 ] || code=$c; }; done
exit "$code"
"""


class LocalRunError(Exception):
    pass


def datastore_path(uri):
    """(datastore, path) of azureml://datastores/<name>/paths/<path>."""
    m = re.fullmatch(r"azureml://datastores/([^/]+)/paths/(.*)", uri)
    if not m:
        raise LocalRunError(f"{uri} is not a datastore folder (azureml://datastores/NAME/paths/PATH)")
    return m.group(1), m.group(2).strip("/")


def job_v1(plan):
    """The job of an azureml-core dry run (runConfiguration as _serialize_run_config_to_dict writes it)."""
    rc = plan["runConfiguration"]
    env = rc["environment"]
    mounts = {}
    for name, ref in rc["dataReferences"].items():
        if ref["mode"] != "mount":
            raise LocalRunError(f"data reference {name}: mode {ref['mode']} is not rehearsed here (only mount)")
        mounts[name] = (ref["pathOnDataStore"].strip("/"), False, f"$AZUREML_DATAREFERENCE_{name}")
    mounts.update(local_workspace.named_inputs(plan))  # DATA_PATH: a FileDataset, as the tutorial's part 4
    pytorch = rc["framework"] == "PyTorch"
    return {
        "experiment": plan["experiment"],
        "image": env["docker"]["baseImage"],
        "argv": [env["python"]["interpreterPath"], rc["script"], *rc["arguments"]],
        "environment": {**(env.get("environmentVariables") or {}), **(rc.get("environmentVariables") or {})},
        "shm_size": rc["docker"]["shmSize"],
        "docker_args": rc["docker"].get("arguments") or [],
        "mounts": mounts,  # name: (path on the datastore, read-only, placeholder in the arguments)
        "nodes": rc["pytorch"]["nodeCount"] if pytorch else 1,
        "processes": rc["pytorch"]["processCount"] if pytorch else 1,
    }


def job_v2(plan):
    """The job of an azure-ai-ml dry run (the command job's _to_dict())."""
    job = plan["job"]
    mounts = {}
    for kind in ("inputs", "outputs"):
        for name, io in (job.get(kind) or {}).items():
            if io.get("mode") not in ("ro_mount", "rw_mount"):
                raise LocalRunError(f"{kind}.{name}: mode {io.get('mode')} is not rehearsed here (only ro/rw_mount)")
            mounts[name] = (datastore_path(io["path"])[1], io["mode"] == "ro_mount", f"${{{{{kind}.{name}}}}}")
    resources = job.get("resources") or {}
    nodes = resources.get("instance_count", 1)
    per_node = (job.get("distribution") or {}).get("process_count_per_instance", 1)
    return {
        "experiment": plan["experiment_name"],
        "image": job["environment"]["image"],
        "argv": shlex.split(job["component"]["command"]),
        "environment": job.get("environment_variables") or {},
        "shm_size": resources["shm_size"],  # the job's own (azure/aml.py's default), as for v1
        "docker_args": shlex.split(resources.get("docker_args") or ""),
        "mounts": mounts,
        "nodes": nodes,
        "processes": nodes * per_node,
    }


def run_variables(sdk, run_id, experiment):
    """What Azure ML sets in every run's container (names from azureml-core's RunEnvVars), v1 and v2
    alike; the tracking stand-in adds its service's (standin.prepare_v1 and prepare_v2)."""
    env = {"AZUREML_RUN_ID": run_id, "AZUREML_ARM_PROJECT_NAME": experiment, **WORKSPACE}
    env["AZUREML_EXPERIMENT_ID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, experiment))
    return env


def rank_variables(job, rank, master):
    """torch.distributed's variables, as Azure ML's PyTorch distribution sets them on each process
    (LOCAL_WORLD_SIZE is not among them). MASTER_PORT, whose value Azure ML does not document, is left
    to the trainer's default (src/distributed.py)."""
    per_node = job["processes"] // job["nodes"]
    return {
        "MASTER_ADDR": master,
        "WORLD_SIZE": str(job["processes"]),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank % per_node),
        "NODE_RANK": str(rank // per_node),
    }


def workdir(run_id):
    """The job's working directory in the container, as Common Runtime names it on AmlCompute."""
    return f"/mnt/azureml/cr/j/{run_id}/exe/wd"


def wrapper_path(run_id):
    return f"/mnt/azureml/cr/j/{run_id}/cap/lifecycler/wd/execution-wrapper"


def settings():
    """The LOCAL_ settings of the module's docstring, checked once."""
    env = os.environ.get
    start, user, sigterm, grace = (
        env("LOCAL_START") or "wrapper",
        env("LOCAL_USER") or "root",
        env("LOCAL_SIGTERM") or "kill",
        env("LOCAL_GRACE") or "30",
    )
    outputs = env("LOCAL_OUTPUTS") or ("host" if user == "image" else "job")
    if start not in ("wrapper", "entrypoint", "bypass", "exec"):
        raise LocalRunError(f"LOCAL_START={start}: use wrapper (the default), entrypoint, bypass or exec")
    if user not in ("image", "root") and not user.isdigit():
        raise LocalRunError(f"LOCAL_USER={user}: use root (the default), image, or a numeric uid such as 9000")
    if outputs not in ("host", "job", "absent"):
        raise LocalRunError(f"LOCAL_OUTPUTS={outputs}: use job, host or absent")
    if sigterm not in ("kill", "forward"):
        raise LocalRunError(f"LOCAL_SIGTERM={sigterm}: use kill (the default) or forward")
    if not grace.isdigit():
        raise LocalRunError(f"LOCAL_GRACE={grace}: use a whole number of seconds, such as 30")
    mount = env("LOCAL_DATASTORE_MOUNT") or ""
    if mount not in ("", "fuse", "copy"):
        raise LocalRunError(f"LOCAL_DATASTORE_MOUNT={mount}: use fuse or copy (unset: FUSE where it can)")
    uid = None if user == "image" else 0 if user == "root" else int(user)
    setting = {"start": start, "user": user, "outputs": outputs, "sigterm": sigterm, "grace": grace, "uid": uid}
    return {**setting, "datastore": mount}


def run_id_for(experiment):
    """A new run's id, or LOCAL_RUN_ID's (a restart); it names containers and folders, so it is checked."""
    run_id = os.environ.get("LOCAL_RUN_ID") or f"{experiment}_{int(time.time())}_{secrets.token_hex(4)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}", run_id):
        raise LocalRunError(f"LOCAL_RUN_ID={run_id}: use letters, digits, _ and - (a run id the rehearsal printed)")
    return run_id


def owners(setting, host):
    """(owner of the working directory, owner of ./outputs or None when absent), each (uid, gid)."""
    if setting["outputs"] == "host":  # a laptop's folders: the entrypoint drops to their owner
        return host, host
    job_user = (0, 0) if setting["uid"] is None else (setting["uid"], setting["uid"])
    return (0, 0), job_user if setting["outputs"] == "job" else None


def staging(snapshot, run_id, wd_owner, outputs_owner):
    """A tar for `docker cp - NAME:/mnt`: the execution wrapper, root's, and the working directory (the
    snapshot, and ./outputs unless absent). `docker cp` keeps the owners written here: nothing is chowned
    on the host, so no root is needed there."""
    source, buf = Path(snapshot["source_directory"]), BytesIO()
    wd, wrapper = workdir(run_id).removeprefix("/mnt/"), wrapper_path(run_id).removeprefix("/mnt/")
    folders = sorted({str(d) for rel in snapshot["paths"] for d in Path(rel).parents} - {"."})
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in [*reversed(PurePosixPath(wrapper).parents[:-1]), PurePosixPath(wd).parent]:
            tar.addfile(folder(str(name), (0, 0)))
        with WRAPPER.open("rb") as f:
            info = owned(tar.gettarinfo(WRAPPER, wrapper), (0, 0))
            info.mode = 0o755  # whatever the checkout kept of its mode
            tar.addfile(info, f)
        tar.addfile(folder(wd, wd_owner))
        for name in folders:
            tar.addfile(folder(f"{wd}/{name}", wd_owner))
        for rel in snapshot["paths"]:
            with open(source / rel, "rb") as f:
                tar.addfile(owned(tar.gettarinfo(source / rel, f"{wd}/{rel}"), wd_owner), f)
        if outputs_owner:
            tar.addfile(folder(f"{wd}/outputs", outputs_owner))
    return buf.getvalue()


def folder(name, owner):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return owned(info, owner)


def owned(info, owner):
    info.uid, info.gid, info.uname, info.gname = *owner, "", ""
    return info


def mounts(job, source):
    """-v flags for the datastore folders, and the argv with mount paths in place of the placeholders. The
    folders are in `source`: the datastore's FUSE mount, or the folder its paths were downloaded to."""
    volumes, argv = [], list(job["argv"])
    for name, (path, read_only, placeholder) in job["mounts"].items():
        host = source / path
        if read_only and not host.is_dir():
            raise LocalRunError(
                f"{name}: the datastore holds nothing under {path}/: upload it first (make upload-data COMPUTE=local "
                f"DATA_PATH={path})"
            )
        host.mkdir(parents=True, exist_ok=True)
        volumes += ["-v", f"{host}:{DATA}/{name}" + (":ro" if read_only else "")]
        argv = [a.replace(placeholder, f"{DATA}/{name}") for a in argv]
    return volumes, argv


def fuse_python(venv=None):
    """(the interpreter that can run blobmount.py, None) or (None, why there is none). It needs root (a mount
    with allow_other, so that any job user reaches the files), /dev/fuse, and an interpreter that imports fusepy
    over libfuse2 and azure-storage-blob: `venv`'s (default HOST_VENV, else .venv-host, where make installs
    tests/requirements-host.txt) or this one."""
    if os.geteuid() != 0:
        return None, "not root, which a mount with allow_other needs"
    if not Path("/dev/fuse").exists():
        return None, "no /dev/fuse"
    venv = Path(venv or os.environ.get("HOST_VENV") or ".venv-host")
    said = f"{venv}/bin/python is missing"
    for python in (venv / "bin" / "python", Path(sys.executable)):
        if python.is_file():
            r = subprocess.run([str(python), "-c", "import fuse, azure.storage.blob"], capture_output=True, text=True)
            if r.returncode == 0:
                return str(python), None
            said = (r.stderr.strip().splitlines() or [f"{python} exited {r.returncode}"])[-1]
    why = f"neither {venv}/bin/python nor {sys.executable} imports fusepy over libfuse2 and azure-storage-blob ({said})"
    return None, f"{why}: install tests/requirements-host.txt there (make .venv-host) and Debian's libfuse2"


def mounted(path):
    """Whether `path` is a mount point, even one whose FUSE process is gone (os.path.ismount says no there)."""
    return str(path) in {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}


@contextlib.contextmanager
def datastore_source(job, mode):
    """Where the job's datastore folders are, for as long as the run: the datastore (Azurite) mounted through
    rehearsal/blobmount.py, as Azure ML mounts a datastore (ro_mount and rw_mount: a FUSE mount of the blob
    container made by its data runtime, https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2;
    what it refuses: docs/runtime.md, "Checkpoints and outputs on blob storage mounts"); or, where FUSE is not here
    or with LOCAL_DATASTORE_MOUNT=copy, a folder each datastore path is downloaded to, and the written ones uploaded
    from when the run ends (Azure ML's download and upload modes). LOCAL_DATASTORE_MOUNT=fuse stops in one line
    where FUSE is not here. Says on stderr which it did."""
    if not job["mounts"]:
        yield None
        return
    python, why = (None, "LOCAL_DATASTORE_MOUNT=copy") if mode == "copy" else fuse_python()
    if python is None and mode == "fuse":
        raise LocalRunError(f"LOCAL_DATASTORE_MOUNT=fuse: no FUSE here: {why}")
    if python is None:
        copy = Path(tempfile.mkdtemp(prefix="azureml-datastore-"))
        print(f"datastore: downloaded and uploaded ({why if mode == 'copy' else 'no FUSE here: ' + why})",
              file=sys.stderr)  # fmt: skip
        try:
            for path, _, _ in job["mounts"].values():
                datastore.get(path, copy / path)
            yield copy
            for path, read_only, _ in job["mounts"].values():
                if not read_only:
                    datastore.put(list((copy / path).iterdir()), path)
        finally:
            datastore.remove(copy)  # as root in a container: the job's files there may be root's
        return
    endpoint = datastore.start()  # datastore.get and put start it themselves
    mountpoint = Path(tempfile.mkdtemp(prefix="azureml-datastore-")).resolve()  # as /proc/self/mounts names it
    with tempfile.TemporaryFile("w+") as log:
        # A session of its own: a Ctrl-C stops this runner, which removes the containers, then unmounts
        argv = [python, str(BLOBMOUNT), endpoint, str(mountpoint)]
        mount = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + MOUNT_SECONDS
            while not mounted(mountpoint):
                if mount.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    said = (log.read().strip().splitlines() or [f"exited {mount.returncode}"])[-1]
                    raise LocalRunError(f"rehearsal/blobmount.py did not mount {endpoint} on {mountpoint}: {said}")
                time.sleep(0.05)
            print(
                f"datastore: blob storage through FUSE (Azurite's {datastore.CONTAINER} through "
                f"rehearsal/blobmount.py: renames, chmod and chown refused, as on Azure ML's blob storage mounts)",
                file=sys.stderr,
            )
            yield mountpoint
        finally:
            unmount(mountpoint, mount)


def unmount(mountpoint, mount):
    """Unmount (lazily if a process still holds it), let blobmount.py exit, and remove the mount point."""
    if mounted(mountpoint) and subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True)
    try:
        mount.wait(timeout=MOUNT_SECONDS)
    except subprocess.TimeoutExpired:
        mount.kill()
        mount.wait()
    if mounted(mountpoint):
        print(f"warning: {mountpoint} is still mounted: umount {mountpoint}", file=sys.stderr)
    else:
        mountpoint.rmdir()


def node_env(job, plan, run_id, node, master):
    """A node's container environment: the job's variables, the run's, and torch.distributed's for the
    node's first rank (its other ranks set their own RANK and LOCAL_RANK)."""
    env = {**job["environment"], **run_variables(plan["sdk"], run_id, job["experiment"])}
    if job["processes"] > 1:
        env.update(rank_variables(job, node * (job["processes"] // job["nodes"]), master))
    env.update({f"AZUREML_DATAREFERENCE_{n}": f"{DATA}/{n}" for n in job["mounts"] if plan["sdk"] == "v1"})
    return env


def create_node(job, setting, run_id, name, env, volumes, network, command):
    """`docker create` of one node's container, as LOCAL_USER, with what LOCAL_START gives it to run."""
    wd = workdir(run_id)
    # The working directory is a volume of its own: a mount, as Azure ML's is (the trainer warns about
    # outputs written into the container's own file system), removed with the container.
    docker = ["docker", "create", "--name", name, "--shm-size", job["shm_size"], "-v", wd, *volumes]
    docker += ["-w", str(PurePosixPath(wrapper_path(run_id)).parent) if setting["start"] == "wrapper" else wd]
    docker += [a for k, v in env.items() for a in ("-e", f"{k}={v}")] + job["docker_args"]
    docker += ["--network", network] if network else []
    docker += ["--user", f"{setting['uid']}:{setting['uid']}"] if setting["uid"] is not None else []
    per_node = job["processes"] // job["nodes"]
    if per_node > 1:  # one container, all of the node's ranks
        command = ["sh", "-c", LAUNCHER, "launcher", str(per_node), *command]
    if setting["start"] == "exec":  # no command: with the run's variables set, the entrypoint idles
        docker += [job["image"]]
    elif setting["start"] == "wrapper":  # the wrapper changes into the working directory itself
        wrapper = [setting["sigterm"], setting["grace"], wd]
        docker += ["--entrypoint", wrapper_path(run_id), job["image"], *wrapper, *command]
    elif setting["start"] == "bypass":
        docker += ["--entrypoint", command[0], job["image"], *command[1:]]
    else:
        docker += [job["image"], *command]
    subprocess.run(docker, check=True, stdout=subprocess.DEVNULL)


def exec_rank(setting, wd, name, rank, per_node, command):
    """`docker exec` of one rank into its node's idle container (LOCAL_START=exec)."""
    docker = ["docker", "exec", "-w", wd, "-e", f"RANK={rank}", "-e", f"LOCAL_RANK={rank % per_node}"]
    docker += ["-u", f"{setting['uid']}:{setting['uid']}"] if setting["uid"] is not None else []
    return docker + [name, *command]


def popen(argv):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_nodes(job, setting, run_id, names, command):
    """Start each node's container; [(process, prefix)] for each output stream to follow."""
    per_node = job["processes"] // job["nodes"]
    streams = []
    for node, name in enumerate(names):
        if setting["start"] != "exec":
            streams.append((popen(["docker", "start", "--attach", name]), f"[node {node}] " if node else ""))
            continue
        subprocess.run(["docker", "start", name], check=True, stdout=subprocess.DEVNULL)
        for rank in range(node * per_node, (node + 1) * per_node):
            streams.append(
                (
                    popen(exec_rank(setting, workdir(run_id), name, rank, per_node, command)),
                    f"[rank {rank}] " if rank else "",
                )
            )
    return streams


def forward(stream, prefix, first_line):
    for line in stream:
        first_line.setdefault("t", time.monotonic())
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def follow(streams):
    """Forward every stream until its process ends; (exit codes, when the first stream printed or None)."""
    first = [{} for _ in streams]
    threads = [
        threading.Thread(target=forward, args=(p.stdout, prefix, f))
        for (p, prefix), f in zip(streams, first, strict=True)
    ]
    for t in threads:
        t.start()
    codes = [p.wait() for p, _ in streams]
    for t in threads:
        t.join()
    return codes, first[0].get("t")


def collect(name, wd, dest, owner):
    """Azure ML uploads ./outputs when the job ends: copy node 0's into dest (over what an earlier start of
    the run left there), owned by `owner` as a downloaded run would be. Returns the uids that wrote its files
    (who the trainer ran as)."""
    dest.mkdir(parents=True, exist_ok=True)
    cp = subprocess.Popen(
        ["docker", "cp", f"{name}:{wd}/outputs", "-"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    writers = set()
    try:
        with tarfile.open(fileobj=cp.stdout, mode="r|") as tar:
            for member in tar:
                writers |= {member.uid} if member.isfile() else set()
                member.name = member.name.partition("/")[2]  # outputs/x -> x
                if member.name:
                    extract(tar, member, dest)
    except tarfile.ReadError:  # no ./outputs: the job never made one
        pass
    cp.wait()
    if os.geteuid() == 0:
        for path in [dest, *dest.rglob("*")]:
            os.chown(path, *owner)
    return writers


def extract(tar, member, dest):
    """Files and folders, inside dest only; with tarfile's "data" filter too where Python has it (3.11.4
    and later; Debian 12's python3 is 3.11.2, whose extract() takes no filter)."""
    path = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()) or path.is_absolute() or ".." in path.parts:
        return
    member.mode &= 0o755  # no setuid, setgid or sticky bit, nothing others may write
    tar.extract(member, dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


# Azure ML's Common Runtime, when a node cannot pull the job's image (github.com/Azure/azureml-examples/issues/3463;
# the registry's own answer beside it, "unauthorized: authentication required": github.com/Azure/
# MachineLearningNotebooks/issues/1733, learn.microsoft.com/troubleshoot/azure/azure-container-registry/
# authentication-required).
# The manifest types a node accepts (Docker's and OCI's, as docker pull asks for them).
MANIFESTS = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
PULL_FAILED = (
    "Failed to pull Docker image {image}. This error may occur because the compute could not authenticate with the "
    "Docker registry to pull the image. If using ACR please ensure the ACR has Admin user enabled or a Managed "
    "Identity with `AcrPull` access to the ACR is assigned to the compute."
)


def pull(image, state):
    """Pull the job's image as a node does: logged in only as Azure ML's runtime would be (local_workspace.pull_login:
    the registry's admin user if it is on, else the cluster's identity if it holds AcrPull), in a docker config of
    its own, never the user's ~/.docker; `state` is what Azure would hold (local_workspace.resources)."""
    login = local_workspace.pull_login(state)
    said = refusal(image, login) or docker_pull(image, login)
    if not said:
        return
    if "unauthorized" not in said and "no basic auth credentials" not in said:
        raise LocalRunError(f"cannot pull {image}: is the registry running, and was the image pushed there? ({said})")
    where = local_workspace.resources_file()
    why = (
        f"the registry refused {login[0]}'s login: {local_workspace.credentials_file()} is not its logins"
        if login
        else f"{where} says the registry's admin user is off and the cluster has no identity with AcrPull on it: set "
        f"registry.properties.adminUserEnabled to true, or give compute an identity and a roleAssignments entry for "
        f"it with AcrPull (remove {where}: make submit's own, a system-assigned identity with AcrPull)"
    )
    raise LocalRunError(f"{PULL_FAILED.format(image=image)} (registry: {said}; here, {why})")


def basic(login):
    return base64.b64encode(":".join(login).encode()).decode()


def refusal(image, login):
    """What a registry on this host answers a node that asks for the image's manifest with `login` (None: no login):
    None when it gives it, else its error as docker prints it ("unauthorized: authentication required"). Asked
    here because the host's Docker, which already holds the digest it pushed, pulls it without asking; a new node
    has no such copy. Other registries, and ones that answer with a token challenge, are left to docker pull."""
    host, _, name = image.partition("/")
    repository, _, digest = name.partition("@")
    if host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost") or not digest:
        return None
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{digest}", headers={"Accept": MANIFESTS})
    if login:
        request.add_header("Authorization", f"Basic {basic(login)}")
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30):
            return None
    except urllib.error.HTTPError as e:
        if e.code != 401 or not e.headers.get("WWW-Authenticate", "").lower().startswith("basic"):
            return None
        (error, *_) = json.loads(e.read() or b"{}").get("errors") or [{}]
        return f"{error.get('code', 'UNAUTHORIZED').lower()}: {error.get('message', 'authentication required')}"
    except OSError:  # not listening: docker pull says so
        return None


def docker_pull(image, login):
    """`docker pull` with a docker config of its own holding `login` alone; None, or the last line it said."""
    with tempfile.TemporaryDirectory() as config:
        if login:
            auths = {"auths": {image.split("/", 1)[0]: {"auth": basic(login)}}}
            Path(config, "config.json").write_text(json.dumps(auths))
        r = subprocess.run(
            ["docker", "pull", "--quiet", image],
            env={**os.environ, "DOCKER_CONFIG": config},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    return (r.stderr.strip().splitlines() or ["no reason given"])[-1] if r.returncode else None


def run_nodes(plan, job, setting, run_id, volumes, command, outputs):
    """Pull, one container per node, run the job in them, copy ./outputs out, remove them.
    Returns (exit code, pull seconds, start seconds, training seconds, uids that wrote ./outputs)."""
    names = [f"azureml-{run_id}-{node}".lower() for node in range(job["nodes"])]
    network = f"azureml-{run_id}".lower()  # always: the tracking stand-in (standin.py) is on it too
    outputs.parent.mkdir(parents=True, exist_ok=True)
    host = (outputs.parent.stat().st_uid, outputs.parent.stat().st_gid)
    tracker = None
    try:
        start = time.monotonic()
        pull(job["image"], local_workspace.resources())
        pulled = time.monotonic()
        if network:
            subprocess.run(["docker", "network", "create", network], check=True, stdout=subprocess.DEVNULL)
        tracker, tracking = standin.start(plan["sdk"], run_id, job["experiment"], network, WORKSPACE)
        wd = staging(plan["snapshot"], run_id, *owners(setting, host))
        for node, name in enumerate(names):
            env = {**node_env(job, plan, run_id, node, names[0]), **tracking}
            create_node(job, setting, run_id, name, env, volumes + standin.volumes(tracker), network, command)
            # A tar on stdin keeps its owners (no --archive: that would chown all to the container's --user)
            subprocess.run(["docker", "cp", "-", f"{name}:/mnt"], input=wd, check=True)
        codes, began = follow(start_nodes(job, setting, run_id, names, command))
        end = time.monotonic()
        writers = collect(names[0], workdir(run_id), outputs, host)
    finally:
        subprocess.run(["docker", "rm", "-fv", *names], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if tracker:  # what the tracker's service received, beside what the job wrote (docs/runtime.md)
            standin.stop(tracker, outputs / "tracker.json" if outputs.is_dir() else None)
        if network:
            subprocess.run(["docker", "network", "rm", network], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = began or end
    return next((c for c in codes if c), 0), pulled - start, began - pulled, end - began, writers


def main(argv=None):
    plan_file = (argv or sys.argv[1:] or [None])[0]
    if not plan_file:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    setting = settings()
    plan = json.loads(Path(plan_file).read_text())
    job = (job_v2 if plan["sdk"] == "v2" else job_v1)(plan)
    run_id = run_id_for(job["experiment"])
    outputs = Path(os.environ.get("OUTPUTS_DIR", "outputs")) / f"local-{run_id}"
    with datastore_source(job, setting["datastore"]) as source:
        volumes, command = mounts(job, source)
        print(f"run {run_id}: {shlex.join(command)}", file=sys.stderr)
        print(
            "rehearsing: "
            + " ".join(f"LOCAL_{k.upper()}={setting[k]}" for k in ("start", "user", "outputs", "sigterm")),
            file=sys.stderr,
        )
        code, pull, start, training, writers = run_nodes(plan, job, setting, run_id, volumes, command, outputs)
    push = os.environ.get("PUSH_SECONDS")
    print(
        "timing: "
        + (f"push {float(push):.1f} s, " if push else "")
        + f"pull {pull:.1f} s, container start {start:.1f} s, training {training:.1f} s",
        file=sys.stderr,
    )
    if writers:
        print(f"run {run_id}: ./outputs written as uid {', '.join(map(str, sorted(writers)))}", file=sys.stderr)
    print(f"run {run_id} ended {code}: outputs in {outputs}/", file=sys.stderr)
    if code not in (0, 75):  # the trainer's advice names its flags; here they travel in make's TRAIN_ARGS
        hint = 'make submit ... TRAIN_ARGS="--epochs 1 --fake-data 2000"'
        hint += "; make upload-data COMPUTE=local, then DATA_PATH=datasets/cifar10"
        print(f"the job's flags: {hint}", file=sys.stderr)
    return code


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (LocalRunError, datastore.DatastoreError, standin.StandinError, mlflow_front.FrontError) as e:
        # the rehearsal's own: one line
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
