"""make fetch SDK=v1: azureml-core's own Run.get and Run.download_files up to the network, and where the files
land. The network edges stubbed: service discovery, the run's and its experiment's REST GETs, the artifact
service's listing by prefix and each file's download (azureml/core/run.py, azureml/_restclient/)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("azureml.core", reason="SDK v1 tests run in the training image")

import aml_v1  # noqa: E402
import submit  # noqa: E402

SDK = "v1"  # conftest's `source` fixture runs submit.py with this SDK
RUN = "day1-experiment-train_1700000000_0a1b2c3d"
# What the artifact service holds for the run: ./outputs beside the logs
ARTIFACTS = {"outputs/summary.json": "{}", "outputs/model.pt": "weights", "user_logs/std_log.txt": "log"}


@pytest.fixture
def workspace(source, monkeypatch, tmp_path):
    """A workspace and a service-principal login; outputs/ where make mounts OUTPUTS_DIR; the service stubbed."""
    from azureml._base_sdk_common import service_discovery
    from azureml._restclient import artifacts_client
    from azureml._restclient.models import ExperimentDto
    from azureml.core import Workspace
    from azureml.core.authentication import ServicePrincipalAuthentication

    for var, value in zip(submit.aml.WORKSPACE_VARS, ("00000000-0000-0000-0000-000000000000", "rg", "ws"), strict=True):
        monkeypatch.setenv(var, value)
    for var in submit.aml.SP_VARS:
        monkeypatch.setenv(var, "x")
    monkeypatch.setattr(submit, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setattr(ServicePrincipalAuthentication, "_get_arm_token", lambda self: "arm-token")  # Azure AD
    # Workspace() reads the workspace from ARM: the same Workspace, not read
    monkeypatch.setattr(
        aml_v1, "connect", lambda settings, auth: Workspace(**settings, auth=auth, _disable_service_check=True)
    )
    monkeypatch.setattr(
        service_discovery.CachedServiceDiscovery,
        "get_cached_service_url",
        lambda self, *a, **kw: "https://eastus.api.azureml.ms",
    )
    monkeypatch.setattr(
        "azureml._restclient.workspace_client.WorkspaceClient.get_experiment_by_id",
        lambda self, eid, **kw: ExperimentDto(experiment_id=eid, name="day1-experiment-train"),
    )
    listed = []

    def listing(self, prefix_id):  # the artifact service: (path, SAS URL) of each file under the prefix
        listed.append(prefix_id)
        prefix = prefix_id.split("/", 2)[2].rstrip("/") + "/"  # azureml-core 1.61 asks for outputs//
        return [(path, f"https://blob/{path}") for path in ARTIFACTS if path.startswith(prefix)]

    def download_file(url, path, session=None, **kw):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(ARTIFACTS[url.removeprefix("https://blob/")])

    monkeypatch.setattr(artifacts_client.ArtifactsClient, "get_files_by_artifact_prefix_id", listing)
    monkeypatch.setattr(artifacts_client, "download_file", download_file)
    return tmp_path / "outputs", listed


def served(monkeypatch, status):
    from azureml._restclient.models import RunDto

    def get_run(self, run_id, **kw):
        return RunDto(run_id=run_id, root_run_id=run_id, run_number=1, experiment_id="e1", status=status,
                      properties={}, data_container_id=f"dcid.{run_id}")  # fmt: skip

    monkeypatch.setattr("azureml._restclient.workspace_client.WorkspaceClient.get_run", get_run)


def test_a_finished_runs_outputs_land_flat_in_outputs_job(workspace, monkeypatch):
    outputs, listed = workspace
    served(monkeypatch, "Completed")
    assert submit.main(["fetch", "--job", RUN]) == 0
    assert [p.rstrip("/") for p in listed] == [f"ExperimentRun/dcid.{RUN}/outputs"]
    assert {p.name: p.read_text() for p in (outputs / RUN).iterdir()} == {"summary.json": "{}", "model.pt": "weights"}
    assert [p.name for p in outputs.iterdir()] == [RUN]  # no staging folder left


def test_a_running_or_unknown_run_is_one_error_line_and_leaves_nothing(workspace, monkeypatch, capsys):
    from azureml._restclient.exceptions import ServiceException

    outputs, listed = workspace
    served(monkeypatch, "Running")
    assert submit.main(["fetch", "--job", RUN]) == 1
    assert capsys.readouterr().err.strip() == f"error: job {RUN} is Running: fetch it once it has finished"

    def not_found(self, run_id, **kw):
        raise ServiceException(SimpleNamespace(response=SimpleNamespace(status_code=404), message="Run not found"))

    monkeypatch.setattr("azureml._restclient.workspace_client.WorkspaceClient.get_run", not_found)
    assert submit.main(["fetch", "--job", RUN]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: no run {RUN} in workspace ws: JOB is the run id make submit printed"
    )
    assert listed == [] and list(outputs.iterdir()) == []
