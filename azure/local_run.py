"""`make submit COMPUTE=local`: run the job a dry run printed, with Docker, the way AmlCompute runs it.

    python3 azure/local_run.py PLAN.json      # PLAN.json: `submit.py run --dry-run` (SDK v1 or v2)

Reads the job only from the SDK's own serialization in PLAN.json (v1 runConfiguration, v2 command
job), never from make's variables: the image by digest, pulled from its registry; the snapshot
(src/ after .amlignore, as listed in the plan) copied into a working directory the container's
user did not create; the interpreter, script and arguments with $AZUREML_DATAREFERENCE_<name>,
${{inputs.<name>}} and ${{outputs.<name>}} replaced by mount paths; datastore folders mounted
(read-only for ro_mount); the job's environment variables, shm size and docker arguments; the
variables Azure ML sets for a run; for PyTorch distribution one container per rank on one docker
network with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK and NODE_RANK.

Environment: LOCAL_DATASTORE (default .): the host folder that stands for the datastores, so
DATA_PATH=data mounts ./data; OUTPUTS_DIR (default ./outputs): the run's ./outputs lands in
OUTPUTS_DIR/local-<run id>/, owned by OUTPUTS_DIR's owner, like a downloaded run;
LOCAL_USER=root starts the containers as root (default: the image's user); LOCAL_ENTRYPOINT=bypass
runs the interpreter as the entrypoint (default: the image's entrypoint gets the command);
MLFLOW_TRACKING_URI, if set, is passed on. Standard library only: it runs on the host, beside Docker.
Timings go to stderr.
"""

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

WD = "/mnt/azureml/wd"  # the job's working directory in the container
DATA = "/mnt/azureml/data"  # where datastore folders are mounted
MASTER_PORT = "29500"  # not documented for Azure ML; torch's default
# Set by Azure ML for every run; azureml-core's Run.get_context() reads them (azureml/core/run.py,
# Run._load_scope). AZUREML_RUN_TOKEN and AZUREML_SERVICE_ENDPOINT are left out: with no service to
# answer, Run.get_context() then falls back to its offline run, as on a laptop.
WORKSPACE = {
    "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000000",
    "AZUREML_ARM_RESOURCEGROUP": "local",
    "AZUREML_ARM_WORKSPACE_NAME": "local",
}


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
        "shm_size": resources.get("shm_size", "2g"),
        "docker_args": shlex.split(resources.get("docker_args") or ""),
        "mounts": mounts,
        "nodes": nodes,
        "processes": nodes * per_node,
    }


def run_variables(sdk, run_id, experiment):
    """What Azure ML sets in every run's container (names from azureml-core and azureml-mlflow)."""
    env = {"AZUREML_RUN_ID": run_id, "AZUREML_ARM_PROJECT_NAME": experiment, **WORKSPACE}
    env["AZUREML_EXPERIMENT_ID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, experiment))
    if sdk == "v2":
        env["MLFLOW_EXPERIMENT_NAME"] = experiment  # azureml/mlflow/_internal/utils.py reads it
    if os.environ.get("MLFLOW_TRACKING_URI"):  # a local MLflow server stands in for the workspace's
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env


def rank_variables(job, rank, master):
    """torch.distributed's variables, as Azure ML's PyTorch distribution sets them on each process
    (LOCAL_WORLD_SIZE is not among them)."""
    per_node = job["processes"] // job["nodes"]
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": MASTER_PORT,
        "WORLD_SIZE": str(job["processes"]),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank % per_node),
        "NODE_RANK": str(rank // per_node),
    }


def prepare(job, run_id, datastore, outputs, snapshot):
    """Host folders: the working directory with the snapshot, the run's outputs, the mounts.
    Returns (working directory, -v flags, argv with mount paths)."""
    wd = Path(tempfile.mkdtemp(prefix=f"azureml-{run_id}-"))
    source = Path(snapshot["source_directory"])
    for rel in snapshot["paths"]:
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, wd / rel)
    wd.chmod(0o755)  # made by the host user: the container's user may not write here
    outputs.mkdir(parents=True)
    owner = outputs.parent.stat()
    os.chown(outputs, owner.st_uid, owner.st_gid)
    volumes = ["-v", f"{wd}:{WD}", "-v", f"{outputs.resolve()}:{WD}/outputs"]
    argv = list(job["argv"])
    for name, (path, read_only, placeholder) in job["mounts"].items():
        host = (datastore / path).resolve()
        if read_only and not host.is_dir():
            raise LocalRunError(f"{name}: {host} does not exist: put the data there or set LOCAL_DATASTORE")
        host.mkdir(parents=True, exist_ok=True)
        volumes += ["-v", f"{host}:{DATA}/{name}" + (":ro" if read_only else "")]
        argv = [a.replace(placeholder, f"{DATA}/{name}") for a in argv]
    return wd, volumes, argv


def docker_run(job, name, env, volumes, network, command):
    """`docker run` of one process of the job, as the image's user or root, through its entrypoint or not."""
    docker = ["docker", "run", "--rm", "--name", name, "--shm-size", job["shm_size"], "-w", WD, *volumes]
    docker += [a for k, v in env.items() for a in ("-e", f"{k}={v}")] + job["docker_args"]
    docker += ["--network", network] if network else []
    docker += ["--user", "0:0"] if os.environ.get("LOCAL_USER") == "root" else []
    if os.environ.get("LOCAL_ENTRYPOINT") == "bypass":
        return docker + ["--entrypoint", command[0], job["image"], *command[1:]]
    return docker + [job["image"], *command]


def forward(stream, prefix, first_line):
    for line in stream:
        first_line.setdefault("t", time.monotonic())
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def main(argv=None):
    plan_file = (argv or sys.argv[1:] or [None])[0]
    if not plan_file:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    plan = json.loads(Path(plan_file).read_text())
    job = (job_v2 if plan["sdk"] == "v2" else job_v1)(plan)
    run_id = f"{job['experiment']}_{int(time.time())}_{secrets.token_hex(4)}"
    outputs = Path(os.environ.get("OUTPUTS_DIR", "outputs")) / f"local-{run_id}"
    datastore = Path(os.environ.get("LOCAL_DATASTORE", "."))
    wd, volumes, command = prepare(job, run_id, datastore, outputs, plan["snapshot"])
    network = f"azureml-{run_id}".lower() if job["processes"] > 1 else None
    try:
        start = time.monotonic()
        if subprocess.run(["docker", "pull", "--quiet", job["image"]], stdout=subprocess.DEVNULL).returncode:
            raise LocalRunError(f"cannot pull {job['image']}: is the registry running, and was the image pushed there?")
        pulled = time.monotonic()
        if network:
            subprocess.run(["docker", "network", "create", network], check=True, stdout=subprocess.DEVNULL)
        names = [f"{network or 'azureml-' + run_id.lower()}-{rank}" for rank in range(job["processes"])]
        procs, threads, first = [], [], [{} for _ in names]
        print(f"run {run_id}: {shlex.join(command)}", file=sys.stderr)
        for rank, name in enumerate(names):
            env = {**job["environment"], **run_variables(plan["sdk"], run_id, job["experiment"])}
            if network:
                env.update(rank_variables(job, rank, names[0]))
            env.update({f"AZUREML_DATAREFERENCE_{n}": f"{DATA}/{n}" for n in job["mounts"] if plan["sdk"] == "v1"})
            docker = docker_run(job, name, env, volumes, network, command)
            p = subprocess.Popen(docker, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            prefix = f"[rank {rank}] " if rank else ""
            threads.append(threading.Thread(target=forward, args=(p.stdout, prefix, first[rank])))
            threads[-1].start()
            procs.append(p)
        codes = [p.wait() for p in procs]
        for t in threads:
            t.join()
        end = time.monotonic()
    finally:
        shutil.rmtree(wd, ignore_errors=True)
        if network:
            subprocess.run(["docker", "network", "rm", network], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = first[0].get("t", end)
    push = os.environ.get("PUSH_SECONDS")
    print(
        "timing: "
        + (f"push {float(push):.1f} s, " if push else "")
        + f"pull {pulled - start:.1f} s, container start {began - pulled:.1f} s, training {end - began:.1f} s",
        file=sys.stderr,
    )
    code = next((c for c in codes if c), 0)
    print(f"run {run_id} ended {code}: outputs in {outputs}/", file=sys.stderr)
    return code


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LocalRunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
