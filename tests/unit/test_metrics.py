"""metrics.py: metrics.jsonl always; a tracker where the environment names one; never a stopped run."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import metrics
from metrics import Metrics, azureml_run, mlflow_tracking

SRC = Path(metrics.__file__).parent
PARAMS = {"model": "Net", "lr": 0.001, "batch_size": 4}
TAGS = {"image_ref": "cifar10-trainer:test", "source_sha256": "ab" * 32, "packages_sha256": "0123456789abcdef"}


@pytest.fixture(autouse=True)
def no_tracker_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "AZUREML_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in metrics.LOCAL_SERVER_ENV:
        monkeypatch.delenv(name, raising=False)


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def record_a_run(out_dir, tracker_run=None, mlflow=None, artifacts=()):
    m = Metrics(out_dir, tracker_run, mlflow)
    m.start(PARAMS, TAGS)
    for step in (10, 20, 30):
        m.log("loss", 2.0 / step, step, 1)
    m.log("test/accuracy", 0.25, 30, 1)
    m.close(artifacts)
    return m


def imported_after(code, env):
    """Which of azureml.core and mlflow a fresh interpreter holds after running code."""
    probe = f"import sys; sys.path.insert(0, {str(SRC)!r}); {code}; " + (
        "print(sorted(m for m in ('azureml.core', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_without_a_tracker_everything_goes_to_metrics_jsonl(tmp_path):
    m = record_a_run(tmp_path)
    got = rows(tmp_path)
    assert [(r["name"], r["value"], r["step"], r["epoch"]) for r in got][:3] == [
        ("loss", 0.2, 10, 1),
        ("loss", 0.1, 20, 1),
        ("loss", 2.0 / 30, 30, 1),
    ]
    assert all(0 <= r["time"] < 60 for r in got) and m.last == {"loss": 2.0 / 30, "test/accuracy": 0.25}
    assert time.time() - m.t0 < 60


def test_a_rank_without_out_dir_records_nothing(tmp_path):
    m = record_a_run(None)
    assert m.path is None and m.last["test/accuracy"] == 0.25 and not list(tmp_path.iterdir())


def test_outside_azure_ml_neither_azureml_core_nor_mlflow_is_imported():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    assert imported_after("import metrics; metrics.azureml_run(); metrics.mlflow_tracking()", env) == "[]"
    assert azureml_run() is None and mlflow_tracking() is None


def test_azure_ml_run_variable_is_what_makes_azureml_core_load():
    pytest.importorskip("azureml.core")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "AZUREML_RUN_ID": "not-a-real-run"}
    # Without the rest of a real job's variables, azureml-core itself falls back to an offline run.
    got = imported_after("import metrics; assert metrics.azureml_run() is None", env)
    assert got == "['azureml.core']"


def test_mlflow_gets_params_tags_metrics_with_steps_and_the_output_files(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # stands in for the compose server here
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "unit")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}\n")
    record_a_run(out, mlflow=mlflow_tracking(), artifacts=[out / "summary.json", out / "model.pt"])

    (run,) = mlflow.search_runs(experiment_names=["unit"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in PARAMS.items()}
    assert {k: run.data.tags[k] for k in TAGS} == TAGS
    client = mlflow.tracking.MlflowClient()
    history = [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, "loss")]
    assert history == [(r["step"], r["value"]) for r in rows(out) if r["name"] == "loss"]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["summary.json"]  # model.pt absent


def test_a_configured_server_that_is_down_says_so_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t = time.monotonic()
    m = record_a_run(tmp_path, mlflow=mlflow_tracking(), artifacts=[])
    assert time.monotonic() - t < metrics.PROBE_SECONDS + 2  # nothing waits for the server
    err = capsys.readouterr().err
    assert err.count("tracking off") == 1 and f"127.0.0.1:{port}" in err and len(err.splitlines()) == 1
    assert len(rows(tmp_path)) == 4 and m.mlflow is None


def test_a_local_server_gets_short_timeouts_and_azure_ml_keeps_mlflow_defaults(monkeypatch):
    pytest.importorskip("mlflow")
    import os

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "azureml://eastus.api.azureml.ms/mlflow/v1.0/x")
    mlflow_tracking()
    assert not any(name in os.environ for name in metrics.LOCAL_SERVER_ENV)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # a user's own choice wins
    mlflow_tracking()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


class FakeMlflow:
    """Records calls; log_metric raises from the given call on, as a server that died mid-run."""

    def __init__(self, fail_from=None):
        self.calls, self.fail_from, self.metrics = [], fail_from, 0

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            if name == "log_metric":
                self.metrics += 1
                if self.fail_from and self.metrics >= self.fail_from:
                    raise ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/log-metric")

        return call


def test_a_server_lost_mid_run_is_reported_once_then_left_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///nowhere")  # no /health probe for file stores
    fake = FakeMlflow(fail_from=2)
    record_a_run(tmp_path, mlflow=fake, artifacts=[tmp_path / "metrics.jsonl"])
    assert capsys.readouterr().err.count("tracking off") == 1
    assert fake.calls.count("log_metric") == 2 and "log_artifact" not in fake.calls and "end_run" not in fake.calls
    assert len(rows(tmp_path)) == 4


def test_in_an_azure_ml_v2_job_its_own_run_is_used_not_started_nor_ended(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "azureml://eastus.api.azureml.ms/mlflow/v1.0/x")
    monkeypatch.setenv("MLFLOW_RUN_ID", "job-run")
    fake = FakeMlflow()
    record_a_run(tmp_path, mlflow=fake, artifacts=[tmp_path / "metrics.jsonl"])
    assert fake.calls == ["log_params", "set_tags"] + ["log_metric"] * 4  # Azure ML uploads ./outputs


def test_an_sdk_v1_run_gets_everything_once_and_mlflow_nothing(tmp_path):
    class Run:
        def __init__(self):
            self.tags, self.logged = {}, []

        def set_tags(self, tags):
            self.tags.update(tags)

        def log(self, name, value):
            self.logged.append((name, value))

    run, fake = Run(), FakeMlflow()
    record_a_run(tmp_path, tracker_run=run, mlflow=fake)
    assert run.tags == {**{k: str(v) for k, v in PARAMS.items()}, **TAGS}
    assert len(run.logged) == 4 and fake.calls == []
