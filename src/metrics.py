"""The one place that talks to Azure ML: every metric goes to metrics.jsonl and to the run's tracker.

Tracker: azureml-core's Run in an SDK v1 run; MLflow (azureml-mlflow) where Azure ML sets
MLFLOW_TRACKING_URI but Run.get_context() is offline (SDK v2 jobs); none on a laptop, where
metrics.jsonl is the record. Both imports happen here, lazily, and nowhere else.
"""

import json
import os
import time
from pathlib import Path


def azureml_run():
    """The submitted Azure ML run, or None outside Azure ML (or without azureml-core).

    Outside Azure, Run.get_context() gives an offline run whose log() only prints
    "Attempted to log ..." twice per value.
    """
    try:
        from azureml.core import Run
    except ImportError:
        return None
    run = Run.get_context()
    return None if run.id.startswith("OfflineRun") else run


def mlflow_tracking():
    """The mlflow module where a tracking server is configured, else None."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow


class Metrics:
    def __init__(self, out_dir, run=None, mlflow=None):
        """out_dir None: record nothing (ranks other than 0 of a distributed run)."""
        self.path = Path(out_dir) / "metrics.jsonl" if out_dir is not None else None
        self.run = run
        self.mlflow = None if run is not None else mlflow  # one tracker: no metric twice in Studio
        self.start_time = time.time()
        self.last = {}

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
            "time": round(time.time() - self.start_time, 3),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(name, value)
        elif self.mlflow is not None:
            self.mlflow.log_metric(name, value, step=step)

    def start(self, params, tags):
        """Hyperparameters and provenance, once per run, as run tags (strings)."""
        if self.path is None:
            return
        tags = {k: str(v) for k, v in {**params, **tags}.items()}
        if self.run is not None:
            self.run.set_tags(tags)
        elif self.mlflow is not None:
            self.mlflow.set_tags(tags)

    def close(self, artifacts=()):
        """End an MLflow run this process started (Azure ML ends the job's own run, MLFLOW_RUN_ID)."""
        if self.mlflow is not None and not os.environ.get("MLFLOW_RUN_ID") and self.mlflow.active_run():
            self.mlflow.end_run()
