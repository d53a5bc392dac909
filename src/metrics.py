"""The one place that talks to a tracker: every metric goes to metrics.jsonl and to exactly one tracker.

Which tracker, chosen once from what the environment says (docs/runtime.md, "Metrics: which tracker, and why"):
- an Azure ML v2 job: MLflow, into the run Azure ML made for the job (MLFLOW_RUN_ID), never ended here;
- an Azure ML v1 run: azureml-core's run history (`run.log`, as the tutorial does);
- MLFLOW_TRACKING_URI set by the user (`make train MLFLOW=1`): MLflow, in a run this process starts and ends;
- none otherwise: metrics.jsonl is the record.
azureml-core and mlflow are imported here, lazily, and only for the tracker that was chosen.

A tracker never stops a run: its first failure, at start, mid-run or at close, prints one `tracking off`
line and tracking is off from then on. close() sends what a tracker still holds, whenever it is called.
A point a tracker did not take (a non-finite value, which no tracker is sent; one the service refused or never
confirmed) costs no line of its own: close() prints one `tracking:` line that counts them by metric and reason.
"""

import json
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
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
# In a v1 run, azureml-core's RunHistory context manager (azureml/history/_tracking.py) calls
# azureml.mlflow._setup_remote, which sets MLFLOW_TRACKING_URI to the workspace's URI plus this and
# MLFLOW_RUN_ID to the v1 run: MLflow variables alone do not make a v2 job.
V1_WRAPPER_MARK = "is-remote=true"
STATUSES = ("FINISHED", "KILLED", "FAILED")  # mlflow.entities.RunStatus names
FLUSH_SECONDS = 60  # azureml-core's default is 300; a run that ends should not hang on a slow service
NOT_FINITE = "not finite, not sent"  # Azure ML's run history and MLflow endpoint refuse NaN and infinities


def choose(env=os.environ):
    """ "mlflow", "azureml" or None: the one tracker this environment names."""
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if uri and env.get("MLFLOW_RUN_ID") and V1_WRAPPER_MARK not in uri.lower():
        return "mlflow"  # an Azure ML v2 job: Azure made the run and named it
    if env.get("AZUREML_RUN_ID"):
        return "azureml"
    return "mlflow" if uri else None


def tracker():
    """The tracker this environment names, not yet started (nothing is imported or contacted here)."""
    kind = choose()
    if kind == "azureml":
        return RunHistory()
    if kind == "mlflow":
        return MlflowRun(os.environ["MLFLOW_TRACKING_URI"])
    return None


def server_defaults(uri):
    """Short timeouts for an http(s) server (a user's own settings win); azureml:// keeps MLflow's."""
    if uri.startswith(("http://", "https://")):
        for name, value in LOCAL_SERVER_ENV.items():
            os.environ.setdefault(name, value)


def reachable(uri):
    """None if an http(s) tracking server answers /health, else why not (one short try)."""
    if not uri.startswith(("http://", "https://")):
        return None  # azureml:// and file: stores have no /health; MLflow reports their errors
    import urllib.request  # here: a run without a server need not import it

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS):
            return None
    except OSError as e:  # URLError, HTTPError, timeouts, refused connections
        return str(getattr(e, "reason", e))


def describe(error):
    """str(error), or its type's name: azureml-core's ServiceException.__str__ itself raises TypeError
    when the service answered without error details (azureml/_restclient/exceptions.py, __repr__)."""
    try:
        return str(error) or type(error).__name__
    except Exception:
        return type(error).__name__


class RunHistory:
    """Azure ML's run history through azureml-core's Run, what the tutorial's `run.log` writes to."""

    where = "Azure ML run history"

    def __init__(self):
        self.run = None
        self.lock = threading.Lock()  # azureml-core posts batches from its worker threads
        self.sent = Counter()  # points handed to run.log, by metric
        self.taken = Counter()  # points the service took, by metric
        self.refused = Counter()  # (metric, the service's reason): points it answered 207 for
        self.why = None  # the last error of a batch post: what the points not taken wait on

    def start(self, params, tags):
        from azureml.core import Run

        # Reads AZUREML_RUN_ID, AZUREML_RUN_TOKEN, AZUREML_SERVICE_ENDPOINT and AZUREML_ARM_*, then asks
        # the service for the run: its REST and token errors raise (azureml-core 1.61, azureml/core/run.py).
        run = Run.get_context()
        if run.id.startswith("OfflineRun"):  # its log() only prints "Attempted to log ..."
            raise RuntimeError("no run: AZUREML_RUN_TOKEN or AZUREML_SERVICE_ENDPOINT is not set")
        self.run = run
        self.count(run._client.metrics)
        run.set_tags({**{k: str(v) for k, v in params.items()}, **tags})  # v1 runs have no parameters: both as tags

    def count(self, client):
        """Count what the service takes of each batch azureml-core posts (its MetricsClient, private names of
        azureml-core 1.61: azureml/_restclient/metrics_client.py). Its own post answers a refusal only with a
        logger warning per point (_post_run_metrics_log_failed_validations, for 207 Multi-Status) or per batch
        (_log_batch_v2, which retries a failed batch once after 3 s), and the lost points are named nowhere."""
        post = client._client.metric.post_run_metrics

        def counted(subscription, group, workspace, run_id, batch, **kwargs):  # the replaced method's, once a try
            try:
                result = post(subscription, group, workspace, run_id, batch, **kwargs)
            except Exception as e:
                status = getattr(getattr(e, "response", None), "status_code", None)  # msrest's HttpOperationError
                self.why = " ".join(((f"HTTP {status} " if status else "") + describe(e)).split())[:120]
                raise  # azureml-core retries it as before (azureml/_restclient/clientbase.py, _handle_retry)
            refused = Counter()
            for error in getattr(result, "errors", None) or []:  # a PostRunMetricsResultDto for 207 only
                why = " ".join(str(error.error_response.error.message).split())[:120]
                refused[(error.metric.name, why)] += len(error.metric.value or ()) or 1
            with self.lock:
                for metric in batch.values:  # a BatchMetricV2Dto: one MetricV2Dto per point
                    self.taken[metric.name] += len(metric.value)
                for (name, _), n in refused.items():
                    self.taken[name] -= n
                self.refused.update(refused)

        client._post_run_metrics_log_failed_validations = counted
        # Its retry warning: a batch that is lost anyway is counted in close()'s one line
        client._logger.addFilter(lambda record: not str(record.msg).startswith("Metrics Client: _execute_with"))

    def log(self, name, value, step):
        self.run.log(name, value, step=step)
        self.sent[name] += 1

    def lost(self):
        """{(metric, why): points} the service did not take, as far as azureml-core got with them."""
        with self.lock:
            lost = Counter(self.refused)
            for name, n in self.sent.items():
                waiting = n - self.taken[name] - sum(k for (m, _), k in self.refused.items() if m == name)
                if waiting > 0:
                    lost[(name, self.why or f"not sent within {FLUSH_SECONDS} s")] += waiting
        return lost

    def close(self, artifacts, status):
        # azureml-core sends metrics from a 1-second timer; flush sends what it holds. The job's run
        # is Azure's to complete (and ./outputs Azure's to upload), so neither happens here.
        if self.run is None:
            return
        try:
            self.run.flush(timeout_seconds=FLUSH_SECONDS)
        except Exception as e:
            # The first failed batch, or a timeout while batches retry: the points they held are what lost()
            # counts. A flush that failed with nothing lost (the ingest wait) turns tracking off as before.
            self.why = self.why or " ".join(describe(e).split())[:120]
            if not self.lost():
                raise


class MlflowRun:
    """MLflow: the run Azure ML made for a v2 job (MLFLOW_RUN_ID), or one this process starts and ends.

    MlflowClient, not the fluent API: fluent's atexit hook would end Azure's run as FINISHED.
    """

    def __init__(self, uri):
        self.where = uri
        self.client = self.run_id = self.experiment = None
        self.own = False

    def start(self, params, tags):
        server_defaults(self.where)
        why = reachable(self.where)
        if why:
            raise ConnectionError(why)
        import mlflow
        from mlflow.entities import Param, RunTag

        # Context MLflow cannot have here and warns about at every run: git (not in the image) and a
        # user name for a uid without a passwd entry (any uid runs the image). The run lacks neither.
        for name in ("mlflow.utils.git_utils", "mlflow.tracking.context.registry"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.client = mlflow.MlflowClient()
        self.run_id = os.environ.get("MLFLOW_RUN_ID") or self.create_run()
        self.client.log_batch(
            self.run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )

    def create_run(self):
        from mlflow.tracking.context.registry import resolve_tags  # the source and user tags fluent's start_run adds

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        # The UI then opens on training runs and their charts, not on GenAI traces.
        self.client.set_experiment_tag(experiment, "mlflow.experimentKind", "custom_model_development")
        self.own, self.experiment = True, experiment
        # MLflow would print its own link at the end, as the trainer sees the server (http://mlflow:5000
        # in compose, which the host cannot open); link() prints one the host opens instead.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        return self.client.create_run(experiment, tags=resolve_tags()).info.run_id

    def link(self):
        """The run's page in the UI: under TRACKING_UI_URL (where the host reaches compose's server,
        which `make train MLFLOW=1` sets) when given, else under an http(s) tracking URI; else None."""
        base = (os.environ.get("TRACKING_UI_URL") or self.where).rstrip("/")
        if base.startswith(("http://", "https://")):
            return f"{base}/#/experiments/{self.experiment}/runs/{self.run_id}"
        return None

    def log(self, name, value, step):
        self.client.log_metric(self.run_id, name, value, step=step)

    def lost(self):
        """Nothing: MLflow's client sends each point before it returns, and a refusal raises."""
        return Counter()

    def close(self, artifacts, status):
        if self.client is None:
            return
        import mlflow

        mlflow.flush_async_logging()  # a no-op unless MLFLOW_ENABLE_ASYNC_LOGGING queued metrics
        if self.own:  # Azure ML uploads ./outputs and ends the job's own run itself
            for path in artifacts:
                if Path(path).is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, status)
            link = self.link()
            if link:
                print(f"mlflow: {link}")


def append_line(path, line):
    """One line at the end of metrics.jsonl: fsynced with each checkpoint (sync), not at every line."""
    with open(path, "a") as f:
        f.write(line + "\n")


class Metrics:
    def __init__(self, out_dir, tracker=None):
        """out_dir None: record nothing (ranks other than 0 of a distributed run). tracker: this run's
        one tracker (tracker() gives it, or None)."""
        self.path = Path(out_dir) / "metrics.jsonl" if out_dir is not None else None
        self.tracker = tracker
        self.t0 = time.time()  # the run's wall-clock start
        self.last = {}
        self.tracked = 0  # points logged while a tracker was on
        self.withheld = Counter()  # (metric, NOT_FINITE): points no tracker was sent

    def call(self, method, *args):
        """One call to the tracker; its first failure turns tracking off for the rest of the run."""
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as e:
            self.tracking_off(e)

    def tracking_off(self, error):
        """Say once why, then go on without the tracker: metrics.jsonl still has everything."""
        where, self.tracker = self.tracker.where, None
        detail = " ".join(describe(error).split())[:200]
        fix = "; `make ui` starts the local server" if where.startswith("http://mlflow:") else ""
        print(
            f"tracking off: {where} failed ({detail}); the run goes on, metrics.jsonl records it{fix}", file=sys.stderr
        )

    def resume(self, step):
        """A run continued from its checkpoint at `step`: metrics.jsonl keeps what was logged up to it
        (what a killed run logged after it, or tore mid-line, is logged again), and `last` is read back."""
        if self.path is None or not self.path.exists():
            return
        kept, text = [], self.path.read_text()
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # the line a kill tore: the last one
                break
            if record["step"] > step:
                break
            kept.append(line)
            self.last[record["name"]] = float(record["value"])
        # The lines kept begin the file: the rest is cut off in one step, which a kill cannot tear (rewritten,
        # in place where the mount refuses renames, the file could lose lines this run does not log again).
        size, kept_size = len(text.encode()), sum(len(line.encode()) + 1 for line in kept)
        if kept_size < size:
            os.truncate(self.path, kept_size)
        elif kept_size > size:  # every line kept, the last one whole but without its newline
            append_line(self.path, "")
        self.sync()

    def sync(self):
        """metrics.jsonl on disk up to now: called before a checkpoint, so that what resume() keeps survives
        a power cut as the checkpoint does."""
        if self.path is not None and self.path.exists():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def start(self, params, tags):
        """Once per run: the recipe as parameters, provenance (image, code, packages) as tags."""
        if self.path is not None:
            self.call("start", params, {k: str(v) for k, v in tags.items()})

    def log(self, name, value, step, epoch):
        value = float(value)
        self.last[name] = value
        if self.path is None:
            return
        record = {"name": name, "value": value, "step": step, "epoch": epoch, "time": round(time.time() - self.t0, 3)}
        append_line(self.path, json.dumps(record))
        if self.tracker is None:
            return
        self.tracked += 1
        if not math.isfinite(value):  # a diverged loss, or a class absent from a small test set
            self.withheld[(name, NOT_FINITE)] += 1
            return
        self.call("log", name, value, step)

    def close(self, artifacts=(), status="FINISHED"):
        """Send what the tracker holds and close it; an MLflow run this process started also gets the
        output files and ends with status. Safe at any time and more than once: the first call closes."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        self.call("close", list(artifacts), status)
        if self.tracker is not None:  # a failed close has said its line
            self.say_lost(self.tracker.where, self.withheld + self.tracker.lost())
        self.tracker = None

    def say_lost(self, where, lost):
        """One line for every point the tracker lacks, by reason and metric; none if it has them all."""
        if not lost:
            return
        reasons = {}
        for (name, why), n in sorted(lost.items()):
            reasons.setdefault(why, []).append(f"{name} {n}")
        parts = "; ".join(f"{why}: {', '.join(names)}" for why, names in reasons.items())
        print(
            f"tracking: {where} lacks {sum(lost.values())} of {self.tracked} points ({parts}); metrics.jsonl has them",
            file=sys.stderr,
        )
