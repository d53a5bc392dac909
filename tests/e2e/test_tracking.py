"""The local MLflow server end to end: compose starts it, two short runs log to it, its REST API holds
exactly what each run wrote to metrics.jsonl, and its UI, loaded in headless Chromium, lists both runs
and draws each run's falling loss. The runs train on the fixture's learnable images (real CIFAR-10 files
in format, each class its own pattern plus noise), so the loss falls as it would on CIFAR-10.

Images: IMAGE (the trainer), IMAGE_MLFLOW and IMAGE_BROWSER (`make build-mlflow build-browser`; built here when
missing). The screenshot is kept in E2E_ARTIFACTS (default $TMPDIR/cifar10-e2e/) and its path printed.
"""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import e2e_env
from e2e_env import IMAGE, TESTS_MOUNT, UID, make_dirs

IMAGE_MLFLOW = os.environ.get("IMAGE_MLFLOW", "cifar10-mlflow:local")
IMAGE_BROWSER = os.environ.get("IMAGE_BROWSER", "cifar10-browser:local")
# Outside the checkout, which the tests leave as they found it.
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", Path(tempfile.gettempdir()) / "cifar10-e2e"))
EXPERIMENT = "e2e-tracking"
SEEDS = (1, 2)
# 2,000 learnable images, 500 steps an epoch: the loss starts falling in the third epoch.
TRAIN = ["--epochs", "4", "--log-interval", "100", "--no-download"]


def environment(tmp, project, **extra):
    """compose's environment: this test's own project (so its own network and volume) and folders."""
    dirs = make_dirs(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        COMPOSE_PROJECT_NAME=project,
        IMAGE=IMAGE,
        IMAGE_MLFLOW=IMAGE_MLFLOW,
        IMAGE_BROWSER=IMAGE_BROWSER,
        LOCAL_UID=str(UID),  # where compose still sets `user:` from it
        LOCAL_GID=str(UID),
        DATA_DIR=str(dirs["data"]),
        OUTPUTS_DIR=str(dirs["outputs"]),
        CHECKPOINTS_DIR=str(dirs["checkpoints"]),
        MLFLOW_PORT="",  # any free port on 127.0.0.1: never a clash with a user's server
        **extra,
    )
    return env, dirs


def compose(env, *args, timeout=900, check=True):
    return e2e_env.compose(env, "--profile", "tracking", "--profile", "browser", *args, timeout=timeout, check=check)


def api(url, path, body=None, **query):
    """One call to MLflow's REST API: GET with query parameters, or POST with a JSON body."""
    full = f"{url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The compose `mlflow` service on a free port, with two runs (seeds 1 and 2) logged to it."""
    env, dirs = environment(tmp_path_factory.mktemp("tracking"), f"cifar10-tracking-{os.getpid()}")
    missing = [
        s
        for s, image in (("mlflow", IMAGE_MLFLOW), ("browser", IMAGE_BROWSER))
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
    ]
    if missing:
        compose(env, "build", *missing, timeout=1800)
    try:
        compose(env, "up", "-d", "--wait", "mlflow", timeout=300)
        url = "http://" + compose(env, "port", "mlflow", "5000").stdout.strip()
        fixture = ["python", "/app/tests/cifar_fixture.py", "/work/data", "400", "--learnable"]
        compose(env, "run", "--rm", "-v", TESTS_MOUNT, "train", *fixture)
        runs, links = {}, {}
        # As `make train MLFLOW=1` runs it: the link printed at the end is the one the host opens.
        tracked = {**env, "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
        tracked["TRACKING_UI_URL"] = url
        for seed in SEEDS:
            where = ["--output-dir", f"outputs/seed{seed}", "--checkpoint-dir", f"checkpoints/seed{seed}"]
            r = compose(
                tracked, "run", "--rm", "-v", TESTS_MOUNT, "train", "python", "/app/tests/e2e/train_on_fixture.py",
                *TRAIN, "--seed", str(seed), *where,
            )  # fmt: skip
            assert "tracking off" not in r.stderr, r.stderr
            assert "mlflow:5000" not in r.stdout, r.stdout  # MLflow's own link, which the host cannot open
            links[seed] = re.findall(rf"^mlflow: ({re.escape(url)}/#/experiments/\d+/runs/\w+)$", r.stdout, re.M)
            runs[seed] = dirs["outputs"] / f"seed{seed}"
        yield url, env, runs, links
    finally:
        compose(env, "down", "--volumes", "--remove-orphans", timeout=300, check=False)


def finished_runs(url):
    experiment = api(url, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    found = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [r["info"]["status"] for r in found] == ["FINISHED"] * len(SEEDS)
    by_seed = {}
    for run in found:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        by_seed[int(params["seed"])] = run
    assert sorted(by_seed) == list(SEEDS)
    return experiment["experiment_id"], by_seed


def test_each_run_in_mlflow_holds_its_metrics_jsonl_params_tags_and_files(server):
    url, _, outputs, links = server
    experiment_id, runs = finished_runs(url)
    for seed, run in runs.items():
        run_id = run["info"]["run_id"]
        assert links[seed] == [f"{url}/#/experiments/{experiment_id}/runs/{run_id}"], links
        written = [json.loads(line) for line in (outputs[seed] / "metrics.jsonl").read_text().splitlines()]
        names = sorted({r["name"] for r in written})
        assert len(names) >= 3  # the loss, throughput, accuracy and per-class accuracies
        for name in names:
            history = api(url, "metrics/get-history", run_id=run_id, metric_key=name)["metrics"]
            logged = sorted((m["step"], m["value"]) for m in history)
            assert logged == sorted((r["step"], r["value"]) for r in written if r["name"] == name), name

        summary = json.loads((outputs[seed] / "summary.json").read_text())
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["seed"] == str(seed) and params["batch_size"] == str(summary["config"]["batch_size"])
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        for key in ("image_ref", "image_revision", "source_sha256", "packages_sha256"):
            assert tags[key] == str(summary[key]), key
        assert tags["image_ref"] == IMAGE
        files = {f["path"] for f in api(url, "artifacts/list", run_id=run_id).get("files", [])}
        assert files == {"model.pt", "curves.png", "summary.json"}
    # Different seeds, different trajectories: the comparison the UI is for has something to compare.
    first, second = ([r["value"] for r in map(json.loads, (o / "metrics.jsonl").open())] for o in outputs.values())
    assert first != second
    for out in outputs.values():  # and a curve worth looking at: it falls
        loss = [r["value"] for r in map(json.loads, (out / "metrics.jsonl").open()) if r["name"] == "loss"]
        assert len(loss) == 20 and loss[-1] < loss[0] - 0.1, loss


def browser(env, *flags, volume=None):
    mount = ["-v", f"{volume}:/out"] if volume else []
    size = [] if any(f.startswith("--window-size") for f in flags) else ["--window-size=1400,900"]
    return compose(env, "run", "--rm", *mount, "browser", *size, *flags, timeout=300)


def drawn_line(dom, metric):
    """The points plotly drew in `metric`'s chart on a run's page (SVG y grows downwards), or []."""
    at = dom.find(f'title="{metric}"')
    found = re.compile(r'class="js-line" d="M([^"]+)"').search(dom, at) if at >= 0 else None
    return [tuple(map(float, xy.split(","))) for xy in found.group(1).split("L")] if found else []


def test_the_ui_draws_each_runs_falling_loss_in_headless_chromium(server):
    url, env, *_ = server
    experiment_id, runs = finished_runs(url)
    for run in runs.values():
        page = f"http://mlflow:5000/#/experiments/{experiment_id}/runs/{run['info']['run_id']}/model-metrics"
        for _ in range(5):  # the charts draw after their data arrives; a busy machine may need another look
            # tall enough that every chart, `loss` last, is in view (charts out of view are not drawn)
            dom = browser(env, "--window-size=1400,3200", "--dump-dom", "--virtual-time-budget=40000", page).stdout
            if drawn_line(dom, "loss"):
                break
            time.sleep(5)
        line = drawn_line(dom, "loss")
        if not line:  # what the browser had, to read after a failure
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "mlflow-run-charts-undrawn.html").write_text(dom)
        # plotly drops points that lie on a straight line, so count a few, not all 20
        assert len(line) >= 5, f"{page}: {line}; the page is in {ARTIFACTS / 'mlflow-run-charts-undrawn.html'}"
        assert line[-1][1] > line[0][1]  # lower on the screen: the loss fell
        assert len(drawn_line(dom, "train/epoch_loss")) >= 2

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    os.chmod(ARTIFACTS, 0o777)  # the browser runs as uid 1000
    browser(env, "--window-size=1400,3200", "--screenshot=/out/mlflow-run-charts.png", "--virtual-time-budget=40000",
            page, volume=ARTIFACTS)  # fmt: skip
    print(f"screenshot of a run's charts: {ARTIFACTS / 'mlflow-run-charts.png'}")


def test_the_ui_lists_both_runs_in_headless_chromium(server):
    url, env, *_ = server
    experiment_id, runs = finished_runs(url)
    page = f"http://mlflow:5000/#/experiments/{experiment_id}/runs"
    names = [r["info"]["run_name"] for r in runs.values()]
    for _ in range(3):  # the page fetches its runs after it loads; a busy machine may need another look
        dom = browser(env, "--dump-dom", "--virtual-time-budget=30000", page).stdout
        if all(name in dom for name in names):
            break
        time.sleep(5)
    assert all(name in dom for name in names), f"{names} not on {page}:\n{dom[-3000:]}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    os.chmod(ARTIFACTS, 0o777)  # the browser runs as uid 1000
    browser(env, "--screenshot=/out/mlflow-runs.png", "--virtual-time-budget=30000", page, volume=ARTIFACTS)
    shot = ARTIFACTS / "mlflow-runs.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot of the runs page: {shot}")


def test_a_configured_server_that_is_down_leaves_training_alone_and_says_so_once(tmp_path):
    env, dirs = environment(tmp_path, f"cifar10-tracking-down-{os.getpid()}", MLFLOW_TRACKING_URI="http://mlflow:5000")
    try:
        r = compose(env, "run", "--rm", "train", "--epochs", "1", "--fake-data", "100", "--log-interval", "25")
        assert r.stderr.count("tracking off") == 1 and "http://mlflow:5000" in r.stderr, r.stderr
        assert json.loads((dirs["outputs"] / "latest" / "summary.json").read_text())["config"]["fake_data"] == 100
    finally:
        compose(env, "down", "--volumes", "--remove-orphans", timeout=300, check=False)
