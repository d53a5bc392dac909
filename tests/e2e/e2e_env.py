"""What the end-to-end tests share: the image under test, the UID it runs as, compose's environment."""

import os

IMAGE = os.environ.get("IMAGE", "cifar10-trainer:local")
UID = 4242  # an arbitrary UID, as OpenShift and some CI runners assign


def compose_env(dirs, uid=UID):
    """The environment `docker compose` needs to run the image as `uid` over those folders."""
    return {
        **os.environ,
        "IMAGE": IMAGE,
        "LOCAL_UID": str(uid),
        "LOCAL_GID": str(uid),
        "DATA_DIR": str(dirs["data"]),
        "OUTPUTS_DIR": str(dirs["outputs"]),
        "CHECKPOINTS_DIR": str(dirs["checkpoints"]),
    }
