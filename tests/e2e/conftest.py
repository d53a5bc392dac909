import os

import pytest


@pytest.fixture
def dirs(tmp_path):
    """Data, outputs and checkpoint folders, mounted where compose.yaml mounts ./data, ./outputs, ./checkpoints."""
    made = {}
    for name in ("data", "outputs", "checkpoints"):
        made[name] = tmp_path / name
        made[name].mkdir()
        os.chmod(made[name], 0o777)  # writable by the container's UID, whoever runs the tests
    return made
