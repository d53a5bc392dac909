"""`make fetch JOB=NAME`: a finished job's ./outputs in OUTPUTS_DIR/NAME/, so that
`make compare A=outputs/latest B=outputs/NAME` is the whole check that the cloud run is the run made here.

    python3 azure/fetch.py NAME     # COMPUTE=local: a rehearsed job; else Azure ML (SDK=v1|v2, default v2)

The job's ./outputs files land flat (summary.json, metrics.jsonl, model.pt, curves.png), owned by whoever
runs make. A rehearsed job's are copied from OUTPUTS_DIR/local-NAME/, where rehearsal/local_run.py left them;
an Azure ML job's are downloaded by `submit.py fetch` in the submit container (adapter.download_outputs),
with OUTPUTS_DIR mounted. Either way into a hidden folder beside the destination first, then renamed into
place: a failed fetch leaves nothing, and a folder that already holds files is kept unless REPLACE=1.
Standard library only: it runs on the host, and inside the submit containers.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aml

# The compose service that runs each SDK (as azure/submit.sh picks it)
SERVICES = {"v1": "submit", "v2": "submit-v2"}
WHERE_NAMES = "the name make submit printed: 'submitted NAME', or with COMPUTE=local 'run NAME ended 0'"


def destination(outputs_dir, job, replace=False):
    """OUTPUTS_DIR/JOB, once JOB is a job's name (one folder name) and the folder holds nothing, or REPLACE."""
    if not job:
        raise aml.SubmitError(f"no job named: make fetch JOB=NAME ({WHERE_NAMES})")
    # Azure ML job names (v2), run ids (v1) and the rehearsal's run ids: letters, digits, _ and -
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}", job):
        raise aml.SubmitError(f"JOB={job} is not a job name: letters, digits, _ and - ({WHERE_NAMES})")
    dest = Path(outputs_dir) / job
    taken = dest.is_symlink() or (dest.exists() and not (dest.is_dir() and not any(dest.iterdir())))
    if taken and not replace:
        raise aml.SubmitError(f"{dest}/ already holds files: move it away, or fetch again with REPLACE=1")
    return dest


def fetched(dest, fetch, what):
    """fetch(folder) into a hidden folder beside dest (one file system: the move is a rename), then into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".fetch-{dest.name}-", dir=dest.parent))
    try:
        fetch(staged)
        if not any(p.is_file() for p in staged.rglob("*")):
            raise aml.SubmitError(f"{what} has no ./outputs files: did it run to its end?")
        staged.chmod(0o755)  # mkdtemp's 0700 would keep the run from others who may read ./outputs
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def fetch_local(outputs_dir, job, replace=False):
    """A rehearsed job's ./outputs, which local_run.py copied to OUTPUTS_DIR/local-<run id>/ when it ended."""
    dest = destination(outputs_dir, job, replace)
    source = Path(outputs_dir) / f"local-{job}"
    if not source.is_dir():
        raise aml.SubmitError(f"no rehearsed job {job}: {source}/ does not exist ({WHERE_NAMES})")
    fetched(dest, lambda folder: shutil.copytree(source, folder, dirs_exist_ok=True), f"job {job}")
    return dest


def fetch_azure(outputs_dir, job, replace, sdk):
    """`submit.py fetch` in the SDK's submit container, OUTPUTS_DIR mounted where it writes (./outputs):
    the container runs as the user who runs make, so the files are theirs."""
    destination(outputs_dir, job, replace)  # before a container starts
    if sdk not in SERVICES:
        raise aml.SubmitError(f"SDK={sdk}: expected v1 (azureml-core) or v2 (azure-ai-ml)")
    Path(outputs_dir).mkdir(parents=True, exist_ok=True)  # not left to docker, which would make it root's
    docker = ["docker", "compose", "--profile", "azure", "run", "--rm"]
    docker += ["-v", f"{Path(outputs_dir).resolve()}:/work/outputs", SERVICES[sdk], "fetch", "--job", job]
    return subprocess.run(docker + (["--replace"] if replace else [])).returncode


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    job, outputs = (args or [""])[0], Path(os.environ.get("OUTPUTS_DIR") or "outputs")
    replace = (os.environ.get("REPLACE") or "0").lower() in ("1", "true", "yes", "on")
    try:
        if os.environ.get("COMPUTE") == "local":
            fetch_local(outputs, job, replace)
        elif fetch_azure(outputs, job, replace, os.environ.get("SDK") or "v2"):
            return 1  # the container said why, in its own error line
    except aml.SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"job {job}: outputs in {outputs / job}/; now: make compare A={outputs}/latest B={outputs / job}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
