"""The one place that talks to azureml-core: every metric goes to Run and to metrics.jsonl.

Outside Azure ML, Run.get_context() returns an offline run, so the same code runs
everywhere; the local file is what survives a laptop run.
"""

import json
import time
from pathlib import Path


def azureml_run():
    """The submitted Azure ML run, or None outside Azure ML (or without azureml-core).

    Outside Azure, Run.get_context() gives an offline run whose log() only prints
    "Attempted to log ..." twice per value; metrics.jsonl is the record there instead.
    """
    try:
        from azureml.core import Run
    except ImportError:
        return None
    run = Run.get_context()
    return None if run.id.startswith("OfflineRun") else run


class Metrics:
    def __init__(self, out_dir, run=None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.run = run
        self.start = time.time()
        self.last = {}

    def log(self, name, value, step, epoch):
        value = float(value)
        self.last[name] = value
        record = {
            "name": name,
            "value": value,
            "step": step,
            "epoch": epoch,
            "time": round(time.time() - self.start, 3),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(name, value)

    def tag(self, tags):
        """Hyperparameters and provenance, once per run, as run tags (strings)."""
        if self.run is not None:
            self.run.set_tags({k: str(v) for k, v in tags.items()})
