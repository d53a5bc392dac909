"""What the end-to-end tests share: the images under test, the UID runs end up as, the folders a run
mounts, the trainer's loss lines, and how compose, docker and make submit are run (the registry is
conftest's session fixture, served by local_registry.py)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "cifar10-trainer:local")
IMAGE_SUBMIT_V2 = os.environ.get("IMAGE_SUBMIT_V2", "cifar10-trainer-submit-v2:local")
# The image starts as root and drops to the owner of ./outputs (docs/runtime.md): tests running as root
# hand their folders to an arbitrary UID, as OpenShift and some CI runners assign; others keep their own.
UID = 4242 if os.getuid() == 0 else os.getuid()
LOSS_LINE = re.compile(r"^epoch=\d+, batch= *\d+: loss \d+\.\d\d$", re.M)  # the tutorial's own line
TESTS_MOUNT = f"{ROOT / 'tests'}:/app/tests:ro"  # the fixture and train_on_fixture.py, inside the image
# The rehearsal's datastore for the session (rehearsal/datastore.py: an Azurite container and its volume, removed
# at the session's end by conftest), never the user's own azureml-datastore.
DATASTORE = f"azureml-datastore-e2e-{os.getpid()}"
TRACKING = f"azureml-tracking-e2e-{os.getpid()}"  # and the workspace's MLflow server (rehearsal/standin.py)


def make_dirs(root):
    """root/data, outputs, checkpoints, owned by UID: the container runs as the owner of the output
    folder, as it would for that host user (compose mounts them at /work/data, outputs, checkpoints)."""
    os.chmod(root, 0o755)
    made = {}
    for name in ("data", "outputs", "checkpoints"):
        made[name] = root / name
        made[name].mkdir()
        os.chown(made[name], UID, UID)
    return made


def tracked_copy(dest, owner_uid=None):
    """The tracked files of this work tree (what `git clone` gives, with this tree's changes) in dest, owned
    by owner_uid if given: commands that write into their checkout (make submit's .azureml/) run there."""
    files = subprocess.check_output(["git", "ls-files", "-z"], cwd=ROOT, text=True).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for path in [dest, *dest.rglob("*")] if owner_uid is not None else ():
        os.lchown(path, owner_uid, owner_uid)
    return dest


def build_labels(image=None):
    """REVISION, VERSION, CREATED and SOURCE as the Makefile gave them to `image`'s build: make in a copy
    without .git then rebuilds nothing and retags nothing."""
    labels = subprocess.check_output(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image or IMAGE], text=True
    )
    found = json.loads(labels) or {}
    names = {"REVISION": "revision", "VERSION": "version", "CREATED": "created", "SOURCE": "source"}
    return {var: found.get(f"org.opencontainers.image.{label}", "") for var, label in names.items()}


def compose(env, *args, timeout=600, check=True):
    """`docker compose ARGS` in the repository with `env`; asserts it exited 0 unless check=False."""
    cmd = ["docker", "compose", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def compose_env(dirs):
    """The environment `docker compose` needs to run the image over those folders (and nothing else)."""
    return {
        **{k: v for k, v in os.environ.items() if k not in ("LOCAL_UID", "LOCAL_GID")},
        "IMAGE": IMAGE,
        "DATA_DIR": str(dirs["data"]),
        "OUTPUTS_DIR": str(dirs["outputs"]),
        "CHECKPOINTS_DIR": str(dirs["checkpoints"]),
    }


def copy_submit_tree(root, *folders):
    """A copy of what `make submit` reads (azure/, rehearsal/, src/, docker/, compose.yaml) under root, with an empty
    workspace config folder, Azure token cache and any other `folders`: the tests may change it freely."""
    for part in ("azure", "rehearsal", "src", "docker", "compose.yaml"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, root / part)
    for folder in (".azureml", "azure-config", *folders):
        (root / folder).mkdir()
    return root


def submit_env(worktree, registry, **env):
    """The environment of `make submit` in `worktree`, pushing to `registry`, with no Azure settings,
    credentials, local-run or tracking choices taken from the machine running the tests."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "DRY_RUN", "LOCAL_", "MLFLOW"))}
    return {
        **clean,
        "IMAGE": IMAGE,
        "IMAGE_SUBMIT_V2": IMAGE_SUBMIT_V2,
        "REGISTRY": registry,
        "LOCAL_DATASTORE": DATASTORE,
        "LOCAL_TRACKING": TRACKING,
        "AZURE_CONFIG_DIR": str(worktree / "azure-config"),
        "LOCAL_UID": str(os.getuid()),
        "LOCAL_GID": str(os.getgid()),
        **env,
    }


def submit_sh(worktree, registry, timeout=600, **env):
    """azure/submit.sh as `make submit` runs it, with no terminal."""
    return subprocess.run(
        ["bash", "azure/submit.sh"],
        cwd=worktree,
        env=submit_env(worktree, registry, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
