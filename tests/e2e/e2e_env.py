"""What the end-to-end tests share: the images under test, the UID runs end up as, how compose and
make submit are run."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "cifar10-trainer:local")
IMAGE_SUBMIT_V2 = os.environ.get("IMAGE_SUBMIT_V2", "cifar10-trainer-submit-v2:local")
# The image starts as root and drops to the owner of ./outputs (docs/runtime.md): tests running as root
# hand their folders to an arbitrary UID, as OpenShift and some CI runners assign; others keep their own.
UID = 4242 if os.getuid() == 0 else os.getuid()


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
    """A copy of what `make submit` reads (azure/, src/, docker/, compose.yaml) under root, with an empty
    workspace config folder, Azure token cache and any other `folders`: the tests may change it freely."""
    for part in ("azure", "src", "docker", "compose.yaml"):
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
