"""What the end-to-end tests share: the image under test, the UID its runs should end up as, compose's environment."""

import os

IMAGE = os.environ.get("IMAGE", "cifar10-trainer:local")
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
