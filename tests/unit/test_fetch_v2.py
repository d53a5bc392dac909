"""make fetch (SDK v2): azure-ai-ml's own JobOperations.download up to the network, and where its files land.
The network edges stubbed: the job's REST GET, the workspace's discovery URL, the default datastore, the run
history's output list and the blob download itself (azure/ai/ml/operations/_job_operations.py)."""

import pytest

pytest.importorskip("azure.ai.ml", reason="SDK v2 tests run in the submit-v2 image")

import submit  # noqa: E402

SDK = "v2"  # conftest's `source` fixture runs submit.py with this SDK
WS = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.MachineLearningServices"
WS += "/workspaces/ws"
JOB = "sharp_apple_1x2y3z"
# The job's default artifact store, as the service keeps it: ./outputs beside the logs
ARTIFACTS = {"outputs/summary.json": "{}", "outputs/model.pt": "weights", "user_logs/std_log.txt": "log"}


@pytest.fixture
def workspace(source, monkeypatch, tmp_path):
    """A workspace and a service-principal login in the environment; outputs/ where make mounts OUTPUTS_DIR."""
    from azure.ai.ml.entities import AzureBlobDatastore
    from azure.ai.ml.operations import DatastoreOperations
    from azure.ai.ml.operations import _job_operations as jobs

    for var, value in {"AZUREML_SUBSCRIPTION_ID": WS.split("/")[2], "AZUREML_RESOURCE_GROUP": "rg"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "ws")
    for var in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.setenv(var, "x")
    monkeypatch.setattr(submit, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setattr(jobs.JobOperations, "_get_workspace_url", lambda self, url_key: "https://eastus.api.azureml.ms")
    monkeypatch.setattr(
        DatastoreOperations,
        "get_default",
        lambda self, **kw: AzureBlobDatastore(name="workspaceblobstore", account_name="a", container_name="c"),
    )
    monkeypatch.setattr(jobs, "get_job_output_uris_from_dataplane", lambda *a, **kw: {})
    asked = []

    def download(uri, destination, datastore_operation):  # the blob download
        asked.append((uri, destination))
        for name, text in ARTIFACTS.items():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            (destination / name).write_text(text)

    monkeypatch.setattr(jobs, "download_artifact_from_aml_uri", download)
    return tmp_path / "outputs", asked


def served(monkeypatch, status):
    """The job's REST GET answers a command job in `status`, as the service returns one (ARM ids)."""
    from azure.ai.ml import command
    from azure.ai.ml.operations import _job_operations as jobs

    job = command(
        command="/opt/venv/bin/python train.py",
        code=f"{WS}/codes/c0de/versions/1",
        compute=f"{WS}/computes/cpu-cluster",
        environment=f"{WS}/environments/cifar10-trainer-v2/versions/1",
        experiment_name="day1-experiment-train",
    )

    def get_job(self, name):
        rest = job._to_job()._to_rest_object()
        rest.name, rest.properties.status = name, status
        return rest

    monkeypatch.setattr(jobs.JobOperations, "_get_job", get_job)


def test_a_finished_jobs_outputs_land_flat_in_outputs_job(workspace, monkeypatch):
    outputs, asked = workspace
    served(monkeypatch, "Completed")
    assert submit.main(["fetch", "--job", JOB]) == 0
    # the whole default artifact store, into download_path/artifacts; of it, ./outputs only, flat
    ((uri, destination),) = asked
    assert uri == f"azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.{JOB}/"
    assert destination.name == "artifacts"
    assert {p.name: p.read_text() for p in (outputs / JOB).iterdir()} == {"summary.json": "{}", "model.pt": "weights"}
    assert [p.name for p in outputs.iterdir()] == [JOB]  # no staging folder left


def test_a_running_or_unknown_job_is_one_error_line_and_leaves_nothing(workspace, monkeypatch, capsys):
    from azure.ai.ml.operations import _job_operations as jobs
    from azure.core.exceptions import ResourceNotFoundError

    outputs, asked = workspace
    served(monkeypatch, "Running")
    assert submit.main(["fetch", "--job", JOB]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: job {JOB}: This job is in state") and "once it has finished" in err[-1]

    def not_found(self, name):
        raise ResourceNotFoundError("(UserError) not found")

    monkeypatch.setattr(jobs.JobOperations, "_get_job", not_found)
    assert submit.main(["fetch", "--job", JOB]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: no job {JOB} in workspace ws: JOB is the name make submit printed"
    )
    assert asked == [] and list(outputs.iterdir()) == []


def test_a_folder_holding_a_run_is_refused_before_any_login(workspace, monkeypatch, capsys):
    outputs, _ = workspace
    (outputs / JOB).mkdir(parents=True)
    (outputs / JOB / "summary.json").write_text("earlier")
    monkeypatch.setattr(submit.aml, "workspace_settings", lambda config: pytest.fail("no login before the check"))
    assert submit.main(["fetch", "--job", JOB]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {outputs / JOB}/ already holds files: move it away, or fetch again with REPLACE=1"
    )
    assert (outputs / JOB / "summary.json").read_text() == "earlier"
