"""The one place that talks to a tracker: every metric goes to metrics.jsonl and to the run's tracker.

Tracker: azureml-core's Run in an SDK v1 run; MLflow where MLFLOW_TRACKING_URI is set: Azure ML
sets it in SDK v2 jobs (azureml-mlflow), and a user sets it to the compose `mlflow` server
(`make train MLFLOW=1`); none otherwise, where metrics.jsonl is the record. Both imports happen
here, lazily, and only when the environment says that they are needed.

A tracker never stops a run: the first failure prints one line and tracking is off from then on.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path

# A local server that is down must cost seconds, not MLflow's defaults (120 s timeout, 7 retries
# with backoff). Names from mlflow/environment_variables.py (mlflow-skinny 3.15). Only for
# http(s) servers: Azure ML's azureml:// tracking keeps MLflow's patient defaults.
LOCAL_SERVER_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
PROBE_SECONDS = 3
EXPERIMENT = "cifar10"  # where MLFLOW_EXPERIMENT_NAME is unset


def azureml_run():
    """The submitted Azure ML run, or None outside Azure ML (or without azureml-core).

    azureml-core takes about a second to import, so it is imported only where Azure ML says
    this is a run: Run.get_context() reads AZUREML_RUN_ID (with AZUREML_ARM_SUBSCRIPTION and
    the other AZUREML_ARM_* variables) and, where it is missing, gives an offline run
    (azureml-core 1.61, azureml/core/run.py, Run._load_scope; the names are in
    azureml/_run_impl/constants.py, RunEnvVars). That offline run's log() only prints
    "Attempted to log ..." twice per value.
    """
    if not os.environ.get("AZUREML_RUN_ID"):
        return None
    try:
        from azureml.core import Run
    except ImportError:
        return None
    run = Run.get_context()
    return None if run.id.startswith("OfflineRun") else run


def mlflow_tracking():
    """The mlflow module where a tracking server is configured, else None."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    if uri.startswith(("http://", "https://")):
        for name, value in LOCAL_SERVER_ENV.items():
            os.environ.setdefault(name, value)
    try:
        import mlflow
    except ImportError:
        return None
    # Context MLflow cannot have here and warns about at every run: git (not in the image) and a
    # user name for a uid without a passwd entry (any uid runs the image). The run lacks neither.
    for name in ("mlflow.utils.git_utils", "mlflow.tracking.context.registry"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return mlflow


def reachable(uri):
    """None if an http(s) tracking server answers /health, else why not (one short try)."""
    if not uri.startswith(("http://", "https://")):
        return None  # azureml:// and file: stores have no /health; MLflow reports their errors
    import urllib.request  # here: a tenth of a second that runs without a server need not pay

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS):
            return None
    except OSError as e:  # URLError, HTTPError, timeouts, refused connections
        return str(getattr(e, "reason", e))


class Metrics:
    def __init__(self, out_dir, run=None, mlflow=None):
        """out_dir None: record nothing (ranks other than 0 of a distributed run)."""
        self.path = Path(out_dir) / "metrics.jsonl" if out_dir is not None else None
        self.run = run
        self.mlflow = None if run is not None else mlflow  # one tracker: no metric twice in Studio
        self.own_run = False  # an MLflow run this process started, so ends and uploads to
        self.t0 = time.time()  # the run's wall-clock start
        self.last = {}

    def tracking_off(self, error):
        """Say once why, then go on without the tracker: metrics.jsonl still has everything."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or "Azure ML"
        detail = " ".join(str(error).split())[:200]
        fix = "; `make ui` starts the local server" if uri.startswith("http://mlflow:") else ""
        print(f"tracking off: {uri} failed ({detail}); the run goes on, metrics.jsonl records it{fix}", file=sys.stderr)
        self.run = self.mlflow = None

    def start(self, params, tags):
        """Once per run: the recipe as parameters, provenance (image, code, packages) as tags."""
        if self.path is None:
            return
        tags = {k: str(v) for k, v in tags.items()}
        if self.run is not None:
            try:  # SDK v1 runs have no parameters: both go in as tags, as before
                self.run.set_tags({**{k: str(v) for k, v in params.items()}, **tags})
            except Exception as e:
                self.tracking_off(e)
            return
        if self.mlflow is None:
            return
        why = reachable(os.environ.get("MLFLOW_TRACKING_URI", ""))
        if why:
            return self.tracking_off(why)
        try:
            if not os.environ.get("MLFLOW_RUN_ID"):  # Azure ML v2 gives its job's run; else our own
                self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
                # The UI then opens on training runs and their charts, not on GenAI traces.
                self.mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
                self.mlflow.start_run()
                self.own_run = True
            self.mlflow.log_params(params)
            self.mlflow.set_tags(tags)
        except Exception as e:
            self.tracking_off(e)

    def log(self, name, value, step, epoch):
        value = float(value)
        self.last[name] = value
        if self.path is None:
            return
        record = {
            "name": name,
            "value": value,
            "step": step,
            "epoch": epoch,
            "time": round(time.time() - self.t0, 3),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        try:
            if self.run is not None:
                self.run.log(name, value)
            elif self.mlflow is not None:
                self.mlflow.log_metric(name, value, step=step)
        except Exception as e:
            self.tracking_off(e)

    def close(self, artifacts=()):
        """Upload the run's output files to an MLflow run this process started, and end it.

        Azure ML uploads ./outputs itself and ends the job's own run (MLFLOW_RUN_ID).
        """
        if self.mlflow is None or not self.own_run:
            return
        try:
            for path in artifacts:
                if Path(path).is_file():
                    self.mlflow.log_artifact(str(path))
            self.mlflow.end_run()
        except Exception as e:
            self.tracking_off(e)
