"""One metric stream: `make submit COMPUTE=local` against the tracking stand-in (rehearsal/standin.py), whose record
of what arrived must equal the run's metrics.jsonl: SDK v1 through azureml-core's run history, SDK v2 through
azureml-mlflow's azureml:// store over TLS into the run Azure ML makes for the job, the image's own code paths
unmodified."""

import json
import math
import subprocess
import uuid

import pytest

import local_run
import standin
from e2e_env import IMAGE, copy_submit_tree, submit_sh

FAST = "--epochs 1 --fake-data 64 --batch-size 8 --log-interval 2"
SCOPE = standin.workspace_scope(local_run.WORKSPACE)  # the rehearsal's workspace, as Azure ML's MLflow paths name it


@pytest.fixture(scope="module")
def worktree(tmp_path_factory):
    return copy_submit_tree(tmp_path_factory.mktemp("worktree"), "outputs")


def points(rows, name):
    """(name, value, step) of each point named so; NaN (a class absent from the test set) as "nan", to compare."""
    return [
        (r["name"], r["value"] if r["value"] == r["value"] else "nan", r["step"]) for r in rows if r["name"] == name
    ]


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_what_the_cloud_receives_is_what_metrics_jsonl_holds(worktree, registry, sdk):
    before = set((worktree / "outputs").iterdir())
    r = submit_sh(worktree, registry, timeout=900, COMPUTE="local", SDK=sdk, TRAIN_ARGS=FAST)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (outputs,) = set((worktree / "outputs").iterdir()) - before
    run = outputs  # in an Azure ML job the run is ./outputs itself: summary.json at outputs/summary.json
    assert (run / "summary.json").is_file(), sorted(p.name for p in run.iterdir())
    written = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    got = json.loads((outputs / "tracker.json").read_text())

    assert len(points(written, "loss")) == 4  # 8 mini-batches, the tutorial's loss every 2
    assert points(got["metrics"], "loss") == points(written, "loss")
    assert points(got["metrics"], "test/accuracy")[-1] == points(written, "test/accuracy")[-1]
    # every other metric too, each exactly once; a non-finite value (a class absent from this small test set) is
    # in metrics.jsonl only: the trainer sends it to no tracker (docs/runtime.md)
    finite = [r for r in written if math.isfinite(r["value"])]
    assert sorted(points(got["metrics"], n) for n in {r["name"] for r in written}) == sorted(
        points(finite, n) for n in {r["name"] for r in written}
    )
    summary = json.loads((run / "summary.json").read_text())
    assert got["tags"]["source_sha256"] == summary["source_sha256"] and got["unexpected"] == []
    assert "tracking off" not in r.stdout + r.stderr
    if sdk == "v2":
        assert got["status"] == "RUNNING"  # the job's run is Azure's to end, not the trainer's
        # Azure's azureml:// URI, served by azureml-mlflow's AzureMLRestStore: its calls carry the store's own
        # prefix (/mlflow/v2.0 and the workspace, under MLflow 3) and reached MLflow over TLS with the job's token
        assert got.get("tracking_uri", "http://").startswith("azureml://"), got.get("tracking_uri")
        assert got["forwarded"] and all(c.split()[1].startswith(f"/mlflow/v2.0{SCOPE}/api/") for c in got["forwarded"])
        assert f"POST /mlflow/v2.0{SCOPE}/api/2.0/mlflow/runs/log-metric" in got["forwarded"]
    standin = f"azureml-{outputs.name.removeprefix('local-')}-standin".lower()  # local_run.py names it after the run
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={standin}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # the stand-in goes with the job


# In the job's container: MLflow's URI, the store class, a metric through the store; then the front's refusals.
PROBE = """
import json, os, requests
from mlflow import MlflowClient, get_tracking_uri
client = MlflowClient()
store = type(client._tracking_client.store)
client.log_metric(os.environ["MLFLOW_RUN_ID"], "probe", 0.5, step=7)
api = "https://" + get_tracking_uri().split("/")[2] + "/mlflow/v2.0{scope}/api/2.0/mlflow/runs/get"
token = {{"Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}}
print(json.dumps({{
    "uri": get_tracking_uri(),
    "store": store.__module__ + "." + store.__name__,
    "no token": requests.get(api, params={{"run_id": os.environ["MLFLOW_RUN_ID"]}}).status_code,
    "other workspace": requests.get(api.replace("/workspaces/", "/workspaces/other-"), headers=token).status_code,
}}))
"""


def test_a_v2_job_tracks_through_azureml_mlflow_over_tls():
    """What a v2 job's container gets from the rehearsal (as local_run.py starts it: the stand-in's variables and
    its CA's mount): MLflow's tracking URI is Azure's azureml:// one, its store azureml-mlflow's AzureMLRestStore,
    which reaches the stand-in over TLS with the job's token; without the token the front answers 401, and 404
    outside the job's workspace."""
    network = f"metric-stream-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", network], check=True, stdout=subprocess.DEVNULL)
    handle = None
    try:
        handle, env = standin.start("v2", "probe", "cifar10", network, local_run.WORKSPACE)
        docker = ["docker", "run", "--rm", "--network", network, *standin.volumes(handle)]
        docker += [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        docker += ["--entrypoint", "python", IMAGE, "-c", PROBE.format(scope=SCOPE)]
        r = subprocess.run(docker, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.splitlines()[-1])
        got = standin.record(handle)
    finally:
        if handle:
            standin.stop(handle)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)

    assert seen["uri"].startswith(f"azureml://{standin.MLFLOW_HOST}/mlflow/v1.0{SCOPE}")
    assert seen["store"] == "azureml.mlflow._store.tracking.store.AzureMLRestStore"
    assert got["metrics"] == [{"name": "probe", "value": 0.5, "step": 7}]
    assert got["forwarded"] == [f"POST /mlflow/v2.0{SCOPE}/api/2.0/mlflow/runs/log-metric"]
    assert (seen["no token"], seen["other workspace"]) == (401, 404)
    assert [u.split()[0] for u in got["unexpected"]] == ["401", "404"]
