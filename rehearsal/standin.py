"""The cloud's side of a run, rehearsed: a local stand-in for the services the trainer's trackers talk to.

    python standin.py [--port 5000]     # the v1 run-history service (Flask, in the cifar10-mlflow image)

v1: the run-history calls that azureml-core 1.61.0.post4 makes for Run.get_context(), run.set_tags,
run.log and run.flush, read from its source and each seen arriving here (paths in that package):
  GET   $AZUREML_DISCOVERY_SERVICE_ENDPOINT: the service URLs (azureml/_base_sdk_common/service_discovery.py,
        discover_services_uris; the keys: azureml/_restclient/service_context.py, _ServiceKeys)
  GET   /history/v1.0/<workspace>/experiment{s/<name>,ids/<id>}/runs/<run>: the run (azureml/core/run.py,
        _SubmittedRun; azureml/_run_impl/run_base.py reads root_run_id and run_number); by id where
        AZUREML_EXPERIMENT_ID is set, as Azure ML sets it
  PATCH the same: run.set_tags (azureml/_restclient/run_client.py)
  POST  /metric/v2.0/<workspace>/runs/<run>/batch: run.log, batched by a 1-second timer
        (azureml/_restclient/operations/metric_operations.py, post_run_metrics; azureml/_common/async_utils)
  GET   /history/v1.0/<workspace>/experiments/<experiment>/runs/<run>/metricsingest/wait: run.flush
        (azureml/_restclient/run_client.py, wait_for_metrics_ingest)
Each needs `Authorization: Bearer <AZUREML_RUN_TOKEN>`, a JWT whose exp azureml-core reads
(azureml/core/authentication.py, _get_initial_token_and_expiry). Anything else is answered 404 and
recorded as unexpected. GET /_recorded serves back what arrived.

v2: Azure ML's MLflow endpoint is played by MLflow's own tracking server (the cifar10-mlflow image,
mlflow 3.15.0, as its ENTRYPOINT runs it): the workspace's, one for all runs as Azure ML's is, kept running in a
container named LOCAL_TRACKING (default azureml-tracking; `docker rm -fv azureml-tracking` forgets its runs) and
joined to each job's network for the run. The job's run is made before the job starts, as Azure ML
does, and the job reaches it through an HTTPS front (rehearsal/mlflow_front.py: the workspace's prefix, a bearer
token, a test CA made for the run). The job gets an azureml:// tracking URI and a token, so its metrics go through
azureml-mlflow's AzureMLRestStore as on Azure; record() reads what arrived through MLflow's REST API.

The functions above the service run on the host with the standard library only (rehearsal/local_run.py
starts and stops the stand-in with them); Flask is imported only by the service.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

IMAGE_MLFLOW = os.environ.get("IMAGE_MLFLOW", "cifar10-mlflow:local")
PORT = 5000
# The discovery keys (azureml/_restclient/service_context.py, _ServiceKeys.initialize): all served here.
SERVICE_KEYS = ("api", "experimentation", "history", "hyperdrive", "modelmanagement", "studio")
WORKSPACE = "/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>"
# By experiment name, or by id where AZUREML_EXPERIMENT_ID is set (azureml/_restclient/operations/run_operations.py,
# get / get_by_exp_id, patch / patch_by_exp_id); run.flush's wait is by name only (run_metric_operations.py).
RUNS = (
    f"/history/v1.0{WORKSPACE}/experiments/<experiment>/runs/<run_id>",
    f"/history/v1.0{WORKSPACE}/experimentids/<experiment>/runs/<run_id>",
)


OPEN = ("/health", "/_recorded", "/discovery")  # the only paths answered without a run token
# v2: the workspace's MLflow host, <region>.api.azureml.ms (learn.microsoft.com/azure/machine-learning/
# how-to-use-mlflow-configure-tracking, "Manually"), a name the front answers to on the job's network only.
MLFLOW_HOST = "local.api.azureml.ms"
CA_IN_JOB = "/mnt/azureml/rehearsal/tracking-ca.pem"  # the test CA, mounted read-only into the job
TRACKING = "azureml-tracking"  # v2: the workspace's MLflow server's name on each job's network (the front's upstream)


class StandinError(Exception):
    pass


def run_token(hours=24):
    """A token shaped as Azure ML's (a JWT with exp), unsigned: the stand-in checks only that one is sent."""
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return part({"alg": "none", "typ": "JWT"}) + "." + part({"exp": int(time.time()) + hours * 3600}) + "."


def api(url, path, body=None):
    """One JSON call to the stand-in (GET, or POST with a body)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def wait_healthy(url, container, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    logs = subprocess.run(["docker", "logs", "--tail", "5", container], capture_output=True, text=True)
    raise StandinError(f"the stand-in {container} did not answer in {seconds} s: {logs.stderr.strip()[-300:]}")


def start(sdk, run_id, experiment, network, workspace):
    """Start the stand-in on the job's network; returns (handle, the variables Azure ML would set for it).
    workspace: AZUREML_ARM_SUBSCRIPTION, _RESOURCEGROUP and _WORKSPACE_NAME (v2 names the workspace in its URI)."""
    if subprocess.run(["docker", "image", "inspect", IMAGE_MLFLOW], capture_output=True).returncode:
        raise StandinError(f"the tracking stand-in runs in {IMAGE_MLFLOW}, which is missing: make build-mlflow")
    if sdk == "v2":
        name, url = tracking_server()
        handle = {"sdk": sdk, "name": name, "url": url, "run_id": run_id, "network": network}
        subprocess.run(["docker", "network", "connect", "--alias", TRACKING, network, name], check=True)
        try:
            return handle, prepare_v2(handle, experiment, network, workspace)
        except BaseException:
            stop(handle)
            raise
    name = f"{network}-standin"
    here = os.path.abspath(__file__)
    docker = ["docker", "run", "-d", "--rm", "--name", name, "--network", network, "-p", f"127.0.0.1::{PORT}"]
    docker += ["-v", f"{here}:/standin.py:ro", "--entrypoint", "python", IMAGE_MLFLOW, "/standin.py"]
    subprocess.run(docker, check=True, stdout=subprocess.DEVNULL)
    port = subprocess.run(["docker", "port", name, str(PORT)], capture_output=True, text=True).stdout.split()
    handle = {"sdk": sdk, "name": name, "url": "http://" + port[0] if port else None, "run_id": run_id}
    try:
        wait_healthy(handle["url"] or "http://127.0.0.1:1", name)
        return handle, prepare_v1(handle, experiment)
    except BaseException:
        stop(handle)
        raise


def tracking_server():
    """(name, url on the host) of the workspace's MLflow server (LOCAL_TRACKING), started if it is not running: the
    image's own `mlflow server`, answering to TRACKING on the jobs' networks. Seconds to start, once."""
    name = os.environ.get("LOCAL_TRACKING") or "azureml-tracking"
    running = ["docker", "inspect", "--format", "{{.State.Running}}", name]
    if subprocess.run(running, capture_output=True, text=True).stdout.strip() != "true":
        subprocess.run(["docker", "rm", "-fv", name], capture_output=True)
        hosts = f"{TRACKING},{TRACKING}:*,localhost:*,127.0.0.1:*"
        # A host port chosen here, not by Docker: Docker moves an ephemeral one to a new port when the container
        # joins a network whose name sorts before its first (each job's azureml-... does), as Docker 26 did here.
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            host_port = free.getsockname()[1]
        docker = ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{host_port}:{PORT}", IMAGE_MLFLOW]
        subprocess.run([*docker, "--workers", "1", "--allowed-hosts", hosts], check=True, stdout=subprocess.DEVNULL)
    port = subprocess.run(["docker", "port", name, str(PORT)], capture_output=True, text=True).stdout.split()
    url = "http://" + port[0] if port else "http://127.0.0.1:1"
    wait_healthy(url, name)
    return name, url


def prepare_v1(handle, experiment):
    """What Azure ML sets for azureml-core in a v1 run (names: azureml/_run_impl/constants.py, RunEnvVars)."""
    inside = f"http://{handle['name']}:{PORT}"
    return {
        "AZUREML_RUN_TOKEN": run_token(),
        "AZUREML_SERVICE_ENDPOINT": inside,
        "AZUREML_DISCOVERY_SERVICE_ENDPOINT": f"{inside}/discovery",
        "AZUREML_WORKSPACE_ID": str(uuid.uuid5(uuid.NAMESPACE_URL, "local")),
    }


def prepare_v2(handle, experiment, network, workspace):
    """The job's run, made before the job as Azure ML makes it, the HTTPS front before MLflow's server, and the
    variables Azure ML sets for azureml-mlflow (names: azureml/mlflow/_internal/constants.py, MLflowRunEnvVars;
    all four read in _internal/service_context_loader.py, _mlflow_env_vars_set, and _internal/utils.py,
    get_service_context_from_tracking_url_mlflow_env_vars)."""
    found = experiment_id(handle["url"], experiment)
    run = api(handle["url"], "/api/2.0/mlflow/runs/create", {"experiment_id": found})["run"]
    handle["mlflow_run_id"] = run["info"]["run_id"]
    import mlflow_front  # here: the v1 service runs this file alone in its container

    scope = workspace_scope(workspace)
    token = run_token()  # a JWT: azureml-mlflow reads its exp (azureml_token_authentication.py)
    handle["front"], handle["token"] = f"{network}-standin-front", token  # the run's own
    upstream = f"http://{TRACKING}:{PORT}"
    handle["front_url"], ca = mlflow_front.start(handle["front"], network, MLFLOW_HOST, upstream, scope, token)
    handle["ca_dir"] = tempfile.mkdtemp(prefix="azureml-tracking-ca-")
    handle["ca"] = os.path.join(handle["ca_dir"], "ca.pem")
    with open(handle["ca"], "w") as f:
        f.write(ca)
    os.chmod(handle["ca_dir"], 0o755)  # the job's user, whoever it is, reads the mounted file
    os.chmod(handle["ca"], 0o644)
    # The workspace's URI as a job sees it: /mlflow/v1.0 (the "Manually" tab of learn.microsoft.com/azure/
    # machine-learning/how-to-use-mlflow-configure-tracking) and a trailing ? (azureml-mlflow's own
    # get_mlflow_tracking_uri in azureml/mlflow/__init__.py; jobs print it so: github.com/mlflow/mlflow/issues/7806)
    handle["tracking_uri"] = f"azureml://{MLFLOW_HOST}/mlflow/v1.0{scope}?"
    return {
        "MLFLOW_TRACKING_URI": handle["tracking_uri"],
        "MLFLOW_TRACKING_TOKEN": token,
        "MLFLOW_RUN_ID": run["info"]["run_id"],
        "MLFLOW_EXPERIMENT_ID": found,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        # Not Azure's: Azure's front has a public CA's certificate. requests (azureml-mlflow's and MLflow's HTTP)
        # reads this in place of its own bundle, so the image stays as built.
        "REQUESTS_CA_BUNDLE": CA_IN_JOB,
        # Not Azure's either: without it azureml-mlflow asks Azure Resource Manager which cloud it is in
        # (_common/_cloud/cloud.py, _get_cloud_or_default), which the rehearsal has no way to reach. The value is
        # the one Microsoft documents for the public cloud (how-to-use-mlflow-configure-tracking, "Nonpublic Azure
        # Clouds support").
        "AZUREML_CURRENT_CLOUD": "AzureCloud",
    }


def experiment_id(url, experiment):
    """The id of the workspace's experiment of that name, made if it is new (as Azure ML makes it at submit)."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        return api(url, f"/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    return api(url, "/api/2.0/mlflow/experiments/create", {"name": experiment})["experiment_id"]


def workspace_scope(workspace):
    """The workspace's path in Azure ML's MLflow URIs (azureml-mlflow's _internal/utils.py, _WORKSPACE_INFO_REGEX)."""
    return "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/{}".format(
        workspace["AZUREML_ARM_SUBSCRIPTION"],
        workspace["AZUREML_ARM_RESOURCEGROUP"],
        workspace["AZUREML_ARM_WORKSPACE_NAME"],
    )


def volumes(handle):
    """docker -v flags the job's containers need from the stand-in: v2's test CA, read-only."""
    return ["-v", f"{handle['ca']}:{CA_IN_JOB}:ro"] if handle and handle.get("ca") else []


def record(handle):
    """What the stand-in received: run id, status, tags, params and every metric point in arrival order."""
    if handle["sdk"] != "v2":
        got = api(handle["url"], "/_recorded")
        run = got["runs"].get(handle["run_id"], {"tags": {}, "metrics": []})
        return {"run_id": handle["run_id"], "status": "Running", **run, "unexpected": got["unexpected"]}
    run_id = handle["mlflow_run_id"]
    run = api(handle["url"], f"/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    points = []
    for name in sorted({m["key"] for m in run["data"].get("metrics", [])}):
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": name})
        points += api(handle["url"], f"/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
    points.sort(key=lambda m: (int(m["timestamp"]), m["step"]))
    return {
        "run_id": run_id,
        "status": run["info"]["status"],
        "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])},
        "params": {p["key"]: p["value"] for p in run["data"].get("params", [])},
        # MLflow's REST API writes NaN (a class absent from a small test set) as the string "NaN"
        "metrics": [{"name": m["key"], "value": float(m["value"]), "step": int(m["step"])} for m in points],
        **front_record(handle),
    }


def front_record(handle):
    """What the HTTPS front saw: the job's tracking URI, the calls the front forwarded (method and path, each
    once) and the requests it refused (no token: 401; outside the workspace: 404) as unexpected."""
    import mlflow_front

    with open(handle["ca"]) as f:
        got = mlflow_front.recorded(handle["front_url"], f.read(), handle["token"])
    return {
        "tracking_uri": handle["tracking_uri"],
        "forwarded": sorted(set(got["forwarded"])),
        "unexpected": got["refused"],
    }


def stop(handle, save_to=None):
    """Save what the stand-in received (JSON at save_to), then remove it; one line on stderr says where."""
    try:
        if save_to is not None and handle.get("url"):
            got = record(handle)
            save_to.write_text(json.dumps(got, indent=1) + "\n")
            if os.geteuid() == 0:  # the folder's owner's, as everything else a downloaded run holds
                os.chown(save_to, save_to.parent.stat().st_uid, save_to.parent.stat().st_gid)
            print(f"stand-in: {len(got['metrics'])} metric points arrived, record in {save_to}", file=sys.stderr)
    except (OSError, KeyError, ValueError) as e:
        print(f"stand-in: no record ({e})", file=sys.stderr)
    finally:
        if handle["sdk"] == "v2":  # the workspace's server stays, for the next run; the run's front goes
            leave = ["docker", "network", "disconnect", "-f", handle["network"], handle["name"]]
            subprocess.run(leave, capture_output=True)
            if handle.get("front"):
                subprocess.run(["docker", "rm", "-f", handle["front"]], capture_output=True)
        else:
            subprocess.run(["docker", "rm", "-f", handle["name"]], capture_output=True)
        if handle.get("ca_dir"):
            shutil.rmtree(handle["ca_dir"], ignore_errors=True)


# The service: runs in the container (Flask is in the cifar10-mlflow image), or in a test's thread.


def app(faults=None):
    """The v1 run-history service; what arrived is in its config["RECORDED"] and at GET /_recorded.

    faults: how it refuses, as Azure ML's service may (FAULTS names each; a test passes them here or changes
    config["FAULTS"], a container takes them at POST /_control); by default it refuses non-finite values only.
    """
    from flask import Flask, abort, jsonify, request

    service = Flask("standin")
    recorded = service.config["RECORDED"] = {"runs": {}, "unexpected": [], "refused": []}
    faults = service.config["FAULTS"] = {**FAULTS, **(faults or {})}
    lock = threading.Lock()
    the_run = lambda run_id: recorded["runs"].setdefault(run_id, {"tags": {}, "metrics": []})  # noqa: E731

    def run(sub, rg, ws, experiment, run_id):
        with lock:
            tags = the_run(run_id)["tags"]
            if request.method == "PATCH":
                tags.update((request.get_json() or {}).get("tags") or {})
            return jsonify(run_dto(run_id, tags))

    def metrics(sub, rg, ws, run_id):
        with lock:
            status = failing(faults)
            if status:
                recorded["refused"].append({"status": status, "path": request.path})
                return refusal(status, faults)
            points, errors = judge(request.get_json(), faults)
            the_run(run_id)["metrics"].extend(points)
            recorded["refused"] += [{"status": 207, "metric": e["metric"]["name"]} for e in errors]
        # 207 Multi-Status with one error per refused metric (PostRunMetricsResultDto): azureml-core reads it
        # (azureml/_restclient/operations/metric_operations.py, post_run_metrics) and logs a warning per error
        # (azureml/_restclient/metrics_client.py, _post_run_metrics_log_failed_validations).
        return (jsonify({"errors": errors}), 207) if errors else jsonify({})

    def control():
        with lock:
            faults.update(request.get_json())
            return jsonify(faults)

    def authorized():
        if request.path in OPEN or request.path == "/_control":  # the rehearsal's own switch, as /_recorded
            return None
        if not bearer(request):
            abort(401)
        if faults["expired"] or expired(request):
            with lock:
                recorded["refused"].append({"status": 401, "path": request.path})
            return jsonify(error_response("InvalidAuthenticationToken", "the run token has expired")), 401
        return None

    def unexpected(error):
        with lock:
            recorded["unexpected"].append(f"{request.method} {request.path}")
        return jsonify({"error": {"code": "NotFound", "message": "not served by the stand-in"}}), 404

    for rule in RUNS:
        service.add_url_rule(rule, view_func=run, methods=["GET", "PATCH"])
        service.add_url_rule(f"{rule}/token", "token-" + rule.split("/")[-4], lambda **_: jsonify(token_result()))
    service.add_url_rule(f"{RUNS[0]}/metricsingest/wait", "ingested", lambda **_: jsonify({}))  # by name only
    service.add_url_rule(f"/metric/v2.0{WORKSPACE}/runs/<run_id>/batch", view_func=metrics, methods=["POST"])
    service.add_url_rule("/discovery", "discovery", lambda: jsonify(dict.fromkeys(SERVICE_KEYS, request.host_url[:-1])))
    service.add_url_rule("/health", "health", lambda: "OK")
    service.add_url_rule("/_recorded", "recorded", lambda: jsonify(recorded))
    service.add_url_rule("/_control", view_func=control, methods=["POST"])
    service.register_error_handler(404, unexpected)
    service.before_request(authorized)
    return service


# How the stand-in refuses, as the run-history service may:
#   nonfinite: a NaN or infinite value gets 207 with an error for its metric (the rest of the batch is kept);
#   names: metric names it refuses the same way (Azure ML documents no rule for names; a test picks them);
#   status, times, retry_after: the next `times` metric batches (-1: all) are answered `status` (429, 500, 503)
#     with Retry-After: retry_after seconds, and nothing of them is kept;
#   expired: every call but discovery is answered 401, as to a run token past its exp (so is the refresh).
FAULTS = {"nonfinite": True, "names": (), "status": None, "times": 0, "retry_after": 1, "expired": False}


def failing(faults):
    """The status that answers this metric batch, or None; uses up one of `times`."""
    if not faults["status"] or faults["times"] == 0:
        return None
    if faults["times"] > 0:
        faults["times"] -= 1
    return faults["status"]


def refusal(status, faults):
    """A whole-batch refusal. azureml-core retries 408, 429, 500, 502, 503, 504 and 530 for a POST on its own
    schedule, ignoring Retry-After: 32 s doubling for 429, 2 s doubling for 500, 2-10 s doubling for 503, 3 retries
    (azureml/_restclient/clientbase.py, _handle_retry, _get_retry_delay), then once more 3 s later
    (metrics_client.py, _log_batch_v2); urllib3 2 would honour Retry-After but retries no POST (msrest's
    method_whitelist is a name urllib3 2 no longer reads: msrest/universal_http/requests.py, ClientRetryPolicy)."""
    from flask import jsonify

    names = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
    body = jsonify(error_response(names.get(status, "ServiceError"), f"the stand-in answers {status}"))
    return body, status, {"Retry-After": str(faults["retry_after"])}


def judge(body, faults):
    """(points kept, one PostRunMetricsError per refused metric) of a batch (azureml/_restclient/models:
    post_run_metrics_error.py, error_response.py, root_error.py)."""
    import math  # here: the functions above the service need none of this

    kept, errors = [], []
    for metric in body["values"]:
        values = [p["data"][metric["name"]] for p in metric["value"]]
        if metric["name"] in faults["names"]:
            why = f"metric name {metric['name']!r} is not valid"
        elif faults["nonfinite"] and not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            why = f"metric {metric['name']!r} has a value that is not a finite number"
        else:
            kept += batch_points({"values": [metric]})
            continue
        errors.append({"metric": metric, "errorResponse": error_response("ValidationError", why)})
    return kept, errors


def error_response(code, message):
    """An ErrorResponse (azureml/_restclient/models/error_response.py) with every field the run-history service
    writes (one quoted in github.com/Azure/azure-sdk-for-python/issues/29024). `details` matters: azureml-core's
    ServiceException iterates it in __str__ (azureml/_restclient/exceptions.py), and _log_batch_v2 formats the
    error before its retry, so a body without it raises TypeError there and the batch is never tried again."""
    nulls = dict.fromkeys(("severity", "messageFormat", "messageParameters", "referenceCode", "detailsUri", "target"))
    error = {"code": code, **nulls, "message": message, "details": [], "innerError": None, "additionalInfo": None}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"error": error, "correlation": {}, "environment": "local", "time": now, "componentName": "run-history"}


def expired(request):
    """Whether the bearer token's exp (a JWT claim, as azureml-core reads it) has passed."""
    try:
        claims = request.headers["Authorization"].split()[1].split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["exp"]
    except (IndexError, KeyError, TypeError, ValueError):
        return False  # not a JWT: the stand-in checks only that one is sent
    return exp < time.time()


def token_result():
    """A fresh run token: azureml-core asks for one when its own expires within 95 s, every 30 s
    (azureml/core/authentication.py, AzureMLTokenAuthentication._update_auth; models/token_result.py)."""
    hours = 24
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + hours * 3600))
    return {"token": run_token(hours), "expiryTimeUtc": expiry}


def bearer(request):
    """Whether a request carries a run token, as every run-history call must."""
    return request.headers.get("Authorization", "").startswith("Bearer ")


def batch_points(body):
    """(name, value, step) of each point in a metrics batch (azureml-core's MetricDto: data[name], step)."""
    return [
        {"name": m["name"], "value": p["data"][m["name"]], "step": p.get("step")}
        for m in body["values"]
        for p in m["value"]
    ]


def run_dto(run_id, tags):
    """The fields of a RunDto (azureml/_restclient/models/run_dto.py) that azureml-core reads."""
    return {"runId": run_id, "rootRunId": run_id, "runNumber": 1, "status": "Running", "tags": tags, "properties": {}}


def main(argv=None):
    from werkzeug.serving import make_server

    args = argv if argv is not None else sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else PORT
    make_server("0.0.0.0", port, app(), threaded=True).serve_forever()


if __name__ == "__main__":
    main()
