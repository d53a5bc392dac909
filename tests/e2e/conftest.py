import os

import pytest

from e2e_env import UID


@pytest.fixture
def dirs(tmp_path):
    """Data, outputs and checkpoint folders, mounted where compose.yaml mounts ./data, ./outputs, ./checkpoints,
    owned by UID: the container runs as the owner of the output folder, as it would for that host user."""
    os.chmod(tmp_path, 0o755)
    made = {}
    for name in ("data", "outputs", "checkpoints"):
        made[name] = tmp_path / name
        made[name].mkdir()
        os.chown(made[name], UID, UID)
    return made
