import os

import pytest

import local_registry
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


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """One registry on 127.0.0.1 for the whole session: the first push sends the 6 GB image, later pushes
    (publish tests, every `make submit COMPUTE=local`) find its layers there."""
    yield from local_registry.serve(tmp_path_factory.mktemp("registry"))
