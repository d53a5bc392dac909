import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: ports, cifar_fixture, shared with the unit tests

import local_registry  # noqa: E402
from e2e_env import DATASTORE, TRACKING, make_dirs  # noqa: E402


@pytest.fixture
def dirs(tmp_path):
    """Data, outputs and checkpoint folders for compose to mount (e2e_env.make_dirs)."""
    return make_dirs(tmp_path)


@pytest.fixture(scope="session")
def registry():
    """One registry on 127.0.0.1 for the whole session: the first push sends the 6 GB image, later pushes
    (publish tests, every `make submit COMPUTE=local`) find its layers there."""
    yield from local_registry.serve(local_registry.SESSION)


@pytest.fixture(scope="session", autouse=True)
def workspace():
    """The session's datastore and MLflow server (e2e_env.DATASTORE, TRACKING), for rehearsal/datastore.py and
    standin.py here and in make submit (submit_env), started by the first test that needs each, removed at the end."""
    os.environ["LOCAL_DATASTORE"], os.environ["LOCAL_TRACKING"] = DATASTORE, TRACKING
    yield
    subprocess.run(["docker", "rm", "-fv", DATASTORE, TRACKING], capture_output=True)
    subprocess.run(["docker", "volume", "rm", "-f", DATASTORE], capture_output=True)
