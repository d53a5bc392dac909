"""metrics.py: metrics.jsonl always; exactly one tracker, the one the environment names; never a stopped run.

The trackers are the real ones: azureml-core against the run-history stand-in (rehearsal/standin.py) on a local
port, MLflow on a file: store. A failure is made by patching only the call that fails.
"""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import metrics
import standin
from metrics import Metrics, choose, tracker

SRC = Path(metrics.__file__).parent
PARAMS = {"model": "Net", "lr": 0.001, "batch_size": 4}
TAGS = {"image_ref": "cifar10-trainer:test", "source_sha256": "ab" * 32, "packages_sha256": "0123456789abcdef"}
V1_URI = "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/x?&is-remote=True"


@pytest.fixture(autouse=True)
def no_tracker_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "AZUREML_")):
            monkeypatch.delenv(name)


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def record_a_run(out_dir, the_tracker=None, artifacts=(), status="FINISHED"):
    m = Metrics(out_dir, the_tracker)
    m.start(PARAMS, TAGS)
    for step in (10, 20, 30):
        m.log("loss", 2.0 / step, step, 1)
    m.log("test/accuracy", 0.25, 30, 1)
    m.close(artifacts, status)
    return m


def points(out_dir):
    return [(r["name"], r["value"], r["step"]) for r in rows(out_dir)]


def imported_after(code, env):
    """Which of azureml.core and mlflow a fresh interpreter holds after running code."""
    probe = f"import sys; sys.path.insert(0, {str(SRC)!r}); {code}; " + (
        "print(sorted(m for m in ('azureml.core', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def standin_service():
    """rehearsal/standin.py's run-history service on a free port, up until the tests end: azureml-core may still
    send what a test's run queued after that test (a run whose tracking went off is never flushed)."""
    pytest.importorskip("azureml.core")
    from werkzeug.serving import make_server

    service = standin.app()
    server = make_server("127.0.0.1", 0, service, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", service.config["RECORDED"], service.config["FAULTS"]


@pytest.fixture
def run_history(standin_service, tmp_path, monkeypatch):
    """The variables an Azure ML v1 run has, pointing at the stand-in; what it recorded for this run."""
    url, recorded, _ = standin_service
    workspace = {"SUBSCRIPTION": "00000000-0000-0000-0000-000000000000", "RESOURCEGROUP": "rg", "WORKSPACE_NAME": "ws"}
    for name, value in workspace.items():
        monkeypatch.setenv(f"AZUREML_ARM_{name}", value)
    monkeypatch.setenv("AZUREML_ARM_PROJECT_NAME", "unit")
    monkeypatch.setenv("AZUREML_EXPERIMENT_ID", str(uuid.uuid5(uuid.NAMESPACE_URL, "unit")))  # Azure ML sets it
    # A run id of its own: azureml-core keeps one Run per id for the process (_SubmittedRun._get_instance).
    run_id = f"unit_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AZUREML_RUN_ID", run_id)
    monkeypatch.setenv("AZUREML_RUN_TOKEN", standin.run_token())
    monkeypatch.setenv("AZUREML_SERVICE_ENDPOINT", url)
    monkeypatch.setenv("AZUREML_DISCOVERY_SERVICE_ENDPOINT", url + "/discovery")
    monkeypatch.setenv("HOME", str(tmp_path))  # azureml-core caches the discovery answer in ~/.azureml
    return recorded["runs"].setdefault(run_id, {"tags": {}, "metrics": []}), recorded["unexpected"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real MLflow store in a folder: the MLflow client, as the compose server or Azure's endpoint would see it."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "unit")
    return mlflow.MlflowClient()


@pytest.fixture
def v2_job(store, monkeypatch):
    """An Azure ML v2 job's variables: Azure made the job's run before the job started."""
    experiment = store.create_experiment("day1-experiment-train")
    run_id = store.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("AZUREML_RUN_ID", "day1-experiment-train_1_abcd")  # set in v2 jobs too
    return run_id


def history(client, run_id):
    got = [(m.key, m.value, m.step, m.timestamp) for name in ("loss", "test/accuracy")
           for m in client.get_metric_history(run_id, name)]  # fmt: skip
    return [m[:3] for m in sorted(got, key=lambda m: m[3])]


@pytest.mark.parametrize(
    "env,kind",
    [
        ({}, None),
        ({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "mlflow"),  # `make train MLFLOW=1`
        ({"AZUREML_RUN_ID": "r", "MLFLOW_TRACKING_URI": "azureml://x", "MLFLOW_RUN_ID": "r"}, "mlflow"),  # v2 job
        ({"AZUREML_RUN_ID": "r"}, "azureml"),  # v1 without azureml-mlflow; the COMPUTE=local v1 rehearsal
        ({"AZUREML_RUN_ID": "r", "MLFLOW_TRACKING_URI": V1_URI, "MLFLOW_RUN_ID": "r"}, "azureml"),  # v1 wrapper
    ],
)
def test_one_tracker_is_chosen_from_what_azure_ml_sets(env, kind):
    assert choose(env) == kind


def test_without_a_tracker_everything_goes_to_metrics_jsonl(tmp_path):
    m = record_a_run(tmp_path)
    assert points(tmp_path) == [
        ("loss", 0.2, 10),
        ("loss", 0.1, 20),
        ("loss", 2.0 / 30, 30),
        ("test/accuracy", 0.25, 30),
    ]
    assert all(0 <= r["time"] < 60 and r["epoch"] == 1 for r in rows(tmp_path))
    assert m.last == {"loss": 2.0 / 30, "test/accuracy": 0.25} and time.time() - m.t0 < 60


def test_a_rank_without_out_dir_records_nothing(tmp_path):
    m = record_a_run(None)
    assert m.path is None and m.last["test/accuracy"] == 0.25 and not list(tmp_path.iterdir())


def test_outside_azure_ml_neither_azureml_core_nor_mlflow_is_imported():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    assert imported_after("import metrics; metrics.Metrics(None, metrics.tracker()).start({}, {})", env) == "[]"
    assert tracker() is None


def test_v1_run_history_gets_tags_and_every_point_and_close_sends_the_last_one(tmp_path, run_history, capsys):
    run, unexpected = run_history
    record_a_run(tmp_path, tracker())
    # No waiting: azureml-core sends from a 1-second timer; without close()'s flush the last points are not there yet.
    assert [(p["name"], p["value"], p["step"]) for p in run["metrics"]] == points(tmp_path)
    assert run["tags"] == {**{k: str(v) for k, v in PARAMS.items()}, **TAGS} and unexpected == []
    assert "tracking off" not in capsys.readouterr().err


def test_v2_job_logs_into_azures_run_and_leaves_it_running(tmp_path, store, v2_job, capsys):
    record_a_run(tmp_path, tracker(), artifacts=[tmp_path / "metrics.jsonl"])
    run = store.get_run(v2_job)
    assert run.info.status == "RUNNING"  # Azure ML ends the job's run, and uploads ./outputs itself
    assert history(store, v2_job) == points(tmp_path) and store.list_artifacts(v2_job) == []
    assert run.data.params == {k: str(v) for k, v in PARAMS.items()} and TAGS.items() <= run.data.tags.items()
    assert "tracking off" not in capsys.readouterr().err


@pytest.mark.parametrize("status", ["FINISHED", "KILLED", "FAILED"])
def test_a_users_server_gets_a_run_of_its_own_ended_with_the_runs_status(tmp_path, store, status):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}\n")
    record_a_run(out, tracker(), artifacts=[out / "summary.json", out / "model.pt"], status=status)
    (run,) = store.search_runs([store.get_experiment_by_name("unit").experiment_id])
    assert run.info.status == status and history(store, run.info.run_id) == points(out)
    assert [a.path for a in store.list_artifacts(run.info.run_id)] == ["summary.json"]  # model.pt absent
    assert store.get_experiment_by_name("unit").tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_users_run_ends_with_one_link_the_host_opens(tmp_path, store, monkeypatch, capsys):
    record_a_run(tmp_path, tracker())
    assert "mlflow" not in capsys.readouterr().out  # a file store has no UI to link to
    monkeypatch.setenv("TRACKING_UI_URL", "http://127.0.0.1:5999/")  # compose's server, as the host reaches it
    run = tracker()
    record_a_run(tmp_path, run)
    experiment = store.get_experiment_by_name("unit").experiment_id
    printed = capsys.readouterr().out
    assert printed == f"mlflow: http://127.0.0.1:5999/#/experiments/{experiment}/runs/{run.run_id}\n", printed


def fail_from(monkeypatch, owner, name, call=1):
    """owner.name raises from its call-th call on, as a service lost at that point would."""
    real, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) >= call:
            raise ConnectionError(f"HTTP 503 from the service ({name})")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


def azureml_calls():
    from azureml.core import Run

    return {"start": (Run, "get_context", 1), "mid-run": (Run, "log", 2), "close": (Run, "flush", 1)}


def mlflow_calls():
    import mlflow

    return {"start": (mlflow.MlflowClient, "log_batch", 1), "mid-run": (mlflow.MlflowClient, "log_metric", 2)}


@pytest.mark.parametrize("phase", ["start", "mid-run", "close"])
@pytest.mark.parametrize("kind", ["v1 run history", "v2 job's run", "own MLflow run"])
def test_a_tracker_failing_costs_one_line_and_never_the_run(tmp_path, request, monkeypatch, capsys, kind, phase):
    if kind == "v1 run history":
        request.getfixturevalue("run_history")
        owner, name, call = azureml_calls()[phase]
    else:
        request.getfixturevalue("v2_job" if kind == "v2 job's run" else "store")
        import mlflow

        at_close = (
            (mlflow, "flush_async_logging", 1) if kind == "v2 job's run" else (mlflow.MlflowClient, "set_terminated", 1)
        )
        owner, name, call = {**mlflow_calls(), "close": at_close}[phase]
    fail_from(monkeypatch, owner, name, call)
    m = record_a_run(tmp_path, tracker(), artifacts=[tmp_path / "metrics.jsonl"])
    m.close()  # a second close, as a failure path may call it again: nothing more happens
    m.log("after/close", 1.0, 40, 1)
    err = capsys.readouterr().err
    # v1 at close: the points the failed flush held are named ("tracking: ... lacks"), not tracking turned off
    assert err.count("tracking") == 1 and "HTTP 503" in err and len(err.strip().splitlines()) == 1, err
    assert len(rows(tmp_path)) == 5 and m.tracker is None


def test_a_configured_server_that_is_down_says_so_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t = time.monotonic()
    record_a_run(tmp_path, tracker())
    assert time.monotonic() - t < metrics.PROBE_SECONDS + 2  # nothing waits for the server
    err = capsys.readouterr().err
    assert err.count("tracking off") == 1 and f"127.0.0.1:{port}" in err and len(err.splitlines()) == 1
    assert len(rows(tmp_path)) == 4


def test_a_v1_run_whose_variables_give_no_run_says_so_once(tmp_path, run_history, monkeypatch, capsys):
    monkeypatch.delenv("AZUREML_RUN_TOKEN")  # azureml-core then falls back to its offline run
    record_a_run(tmp_path, tracker())
    err = capsys.readouterr().err
    assert err.count("tracking off") == 1 and "AZUREML_RUN_TOKEN" in err and run_history[0]["metrics"] == []


def test_a_local_server_gets_short_timeouts_and_azure_ml_keeps_mlflow_defaults(monkeypatch):
    metrics.server_defaults("azureml://eastus.api.azureml.ms/mlflow/v1.0/x")
    assert not any(name in os.environ for name in metrics.LOCAL_SERVER_ENV)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # a user's own choice wins
    metrics.server_defaults("http://mlflow:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    for name in metrics.LOCAL_SERVER_ENV:
        monkeypatch.delenv(name, raising=False)


def test_a_service_that_does_not_know_the_run_costs_one_line(tmp_path, run_history, monkeypatch, capsys):
    """Its 404 without error details makes an exception whose own str() raises (azureml-core's
    ServiceException.__repr__): seen in the rehearsal before the stand-in served runs by experiment id."""
    from flask import Flask, jsonify
    from werkzeug.serving import make_server

    service = Flask("knows-no-run")
    service.add_url_rule("/discovery", view_func=lambda: jsonify(dict.fromkeys(standin.SERVICE_KEYS, url)))
    service.register_error_handler(404, lambda e: (jsonify({"error": {"code": "NotFound", "message": "no run"}}), 404))
    server = make_server("127.0.0.1", 0, service, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AZUREML_SERVICE_ENDPOINT", url)
    monkeypatch.setenv("AZUREML_DISCOVERY_SERVICE_ENDPOINT", url + "/discovery")
    record_a_run(tmp_path, tracker())
    server.shutdown()
    err = capsys.readouterr().err
    assert err.startswith("tracking off: Azure ML run history failed (ServiceException)") and err.count("\n") == 1


def test_close_takes_mlflows_status_names_only_and_is_safe_before_start(tmp_path):
    m = Metrics(tmp_path, tracker())
    m.close()
    m.close(status="KILLED")
    with pytest.raises(ValueError, match="use one of FINISHED, KILLED, FAILED"):
        m.close(status="CANCELED")


def test_the_trainer_finishes_when_azure_mls_run_history_fails_at_start(tmp_path, run_history, monkeypatch, capsys):
    """A REST or auth error inside Run.get_context() costs one line, not the run (it used to crash setup())."""
    pytest.importorskip("torch")
    from runner import run_main

    fail_from(monkeypatch, *azureml_calls()["start"])
    assert run_main(tmp_path, "--epochs 1 --fake-data 40") == 0
    err = capsys.readouterr().err
    assert err.count("tracking off: Azure ML run history failed (HTTP 503") == 1, err


@pytest.fixture
def refusing(standin_service):
    """Set how the stand-in refuses (standin.FAULTS) for one test: faults.update(...); as before afterwards."""
    faults = standin_service[2]
    yield faults
    faults.clear()
    faults.update(standin.FAULTS)


def tracking_lines(err):
    return [line for line in err.splitlines() if line.startswith("tracking")]


def log_points(out_dir, points):
    """A run that logs (name, value) points at steps 10, 20, ... and closes; its Metrics."""
    m = Metrics(out_dir, tracker())
    m.start(PARAMS, TAGS)
    for i, (name, value) in enumerate(points):
        m.log(name, value, 10 * (i + 1), 1)
    m.close()
    return m


def test_v1_points_the_service_refuses_cost_one_line_that_names_them(tmp_path, run_history, refusing, capsys):
    """207 Multi-Status: azureml-core logged a warning per refused point and dropped it."""
    refusing["names"] = ["test/accuracy"]
    log_points(tmp_path, [("loss", 0.5), ("test/accuracy", 0.2), ("loss", 0.4), ("test/accuracy", 0.3)])
    run, unexpected = run_history
    assert [(p["name"], p["value"]) for p in run["metrics"]] == [("loss", 0.5), ("loss", 0.4)] and unexpected == []
    (line,) = tracking_lines(err := capsys.readouterr().err)
    assert line.startswith("tracking: Azure ML run history lacks 2 of 4 points (") and "test/accuracy 2" in line
    assert "metric name 'test/accuracy' is not valid" in line and len(err.splitlines()) == 1, err
    assert len(rows(tmp_path)) == 4


@pytest.mark.parametrize("kind", ["v1 run history", "v2 job's run"])
def test_non_finite_values_go_to_metrics_jsonl_and_to_no_tracker(tmp_path, request, kind, capsys):
    """A diverged loss: Azure ML's run history answers 207 for NaN and infinities; MLflow's store took them."""
    logged = [("loss", 0.5), ("loss", math.nan), ("loss", math.inf), ("loss", math.nan), ("test/accuracy", 0.1)]
    if kind == "v1 run history":
        run, _ = request.getfixturevalue("run_history")
        log_points(tmp_path, logged)
        got = [(p["name"], p["value"]) for p in run["metrics"]]
    else:
        store, run_id = request.getfixturevalue("store"), request.getfixturevalue("v2_job")
        log_points(tmp_path, logged)
        got = [m[:2] for m in history(store, run_id)]
    assert got == [("loss", 0.5), ("test/accuracy", 0.1)]
    written = [(r["name"], r["value"]) for r in rows(tmp_path)]
    assert written[0] == ("loss", 0.5) and math.isnan(written[1][1]) and written[2] == ("loss", math.inf)
    err = capsys.readouterr().err
    assert tracking_lines(err) == [err.strip()] and "lacks 3 of 5 points (not finite, not sent: loss 3)" in err, err


@pytest.mark.parametrize("status", [429, 500, 503])
def test_v1_batches_refused_for_a_while_are_retried_by_azureml_core(
    tmp_path, standin_service, run_history, refusing, monkeypatch, capsys, status
):
    """429 Too Many Requests or a 5xx twice: azureml-core retries (after 32 s, 2 s or 2-10 s, doubling: shortened
    here) and nothing is lost or said."""
    from azureml._restclient import clientbase

    for name in ("DEFAULT_BACKOFF", "DEFAULT_500_BACKOFF", "DEFAULT_503_BACKOFF"):
        monkeypatch.setattr(clientbase, name, 0)
    refusing.update(status=status, times=2)
    log_points(tmp_path, [("loss", 0.5), ("loss", 0.4)])
    assert [p["value"] for p in run_history[0]["metrics"]] == [0.5, 0.4]
    batches = f"/runs/{os.environ['AZUREML_RUN_ID']}/batch"
    assert [r["status"] for r in standin_service[1]["refused"] if r.get("path", "").endswith(batches)] == [status] * 2
    assert capsys.readouterr().err == ""


def test_v1_throttling_past_the_flush_costs_one_line(tmp_path, run_history, refusing, monkeypatch, capsys):
    """429 on every try: azureml-core would retry for minutes; close() waits FLUSH_SECONDS, then says what is lost."""
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 3)
    refusing.update(status=429, times=-1)
    log_points(tmp_path, [("loss", 0.5), ("loss", 0.4), ("test/accuracy", 0.3)])
    assert run_history[0]["metrics"] == []
    err = capsys.readouterr().err
    (line,) = tracking_lines(err)
    assert line.startswith("tracking: Azure ML run history lacks 3 of 3 points (") and "loss 2, test/accuracy 1" in line
    assert "429" in line and len(err.splitlines()) == 1, err


def test_v1_an_expired_run_token_costs_one_line(tmp_path, standin_service, run_history, refusing, capsys):
    """401 for a token past its exp (the refresh refused too): azureml-core retries no 4xx but once, 3 s later."""
    m = Metrics(tmp_path, tracker())
    m.start(PARAMS, TAGS)  # the run and its tags, with a valid token
    refusing["expired"] = True
    m.log("loss", 0.5, 10, 1)
    m.log("loss", 0.4, 20, 1)
    m.close()
    err = capsys.readouterr().err
    (line,) = tracking_lines(err)
    assert "lacks 2 of 2 points" in line and "loss 2" in line and "401" in line and len(err.splitlines()) == 1, err
    batches = f"/runs/{os.environ['AZUREML_RUN_ID']}/batch"
    assert [r["status"] for r in standin_service[1]["refused"] if r.get("path", "").endswith(batches)] == [401, 401]


@pytest.mark.parametrize("kind", ["v1 run history", "v2 job's run"])
def test_a_diverged_run_finishes_with_one_line_in_either_sdk(tmp_path, request, capsys, kind):
    """--lr 1e4 makes the loss NaN within 16 steps: the run still ends 0 with every output, the tracker has the
    finite points, and one line counts the rest."""
    pytest.importorskip("torch")
    from runner import run_main

    if kind == "v1 run history":
        run, _ = request.getfixturevalue("run_history")
    else:
        store, run_id = request.getfixturevalue("store"), request.getfixturevalue("v2_job")
    assert run_main(tmp_path, "--epochs 1 --fake-data 80 --lr 1e4 --log-interval 4") == 0
    written = rows(tmp_path / "out")
    assert {"model.pt", "summary.json", "curves.png", "metrics.jsonl"} <= {p.name for p in (tmp_path / "out").iterdir()}
    finite = [(r["name"], r["value"]) for r in written if math.isfinite(r["value"])]
    if kind == "v1 run history":
        got = [(p["name"], p["value"]) for p in run["metrics"]]
    else:
        got = [(m.key, m.value) for n in {r["name"] for r in written} for m in store.get_metric_history(run_id, n)]
    assert sorted(got) == sorted(finite) and len(finite) < len(written)
    (line,) = tracking_lines(capsys.readouterr().err)
    assert f"lacks {len(written) - len(finite)} of {len(written)} points (not finite, not sent: " in line, line


def test_v1_a_run_token_about_to_expire_is_refreshed_and_nothing_is_lost(tmp_path, run_history, monkeypatch, capsys):
    """azureml-core asks the service for a new token when its own expires within 95 s (its refresh, which the
    stand-in serves): the run goes on with it."""
    monkeypatch.setenv("AZUREML_RUN_TOKEN", standin.run_token(hours=1 / 60))  # a minute left
    record_a_run(tmp_path, tracker())
    assert [(p["name"], p["value"], p["step"]) for p in run_history[0]["metrics"]] == points(tmp_path)
    assert capsys.readouterr().err == "" and run_history[1] == []


def test_the_stand_in_takes_its_refusals_at_control_as_the_rehearsals_container_does(standin_service, refusing):
    """POST /_control (no run token, as GET /_recorded) sets what app(faults) sets."""
    url = standin_service[0]
    assert standin.api(url, "/_control", {"status": 503, "times": 1})["status"] == 503
    assert refusing["status"] == 503 and refusing["times"] == 1 and refusing["nonfinite"] is True
