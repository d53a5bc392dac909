"""One metric stream: `make submit COMPUTE=local` against the tracking stand-in (rehearsal/standin.py), whose record
of what arrived must equal the run's metrics.jsonl: SDK v1 through azureml-core's run history, SDK v2 through
MLflow into the run Azure ML makes for the job, the image's own code paths unmodified."""

import json
import subprocess

import pytest

from e2e_env import copy_submit_tree, submit_sh

FAST = "--epochs 1 --fake-data 64 --batch-size 8 --log-interval 2"


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
    (run,) = (s.parent for s in outputs.rglob("summary.json"))  # the trainer keeps a folder per run in ./outputs
    written = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    got = json.loads((outputs / "tracker.json").read_text())

    assert len(points(written, "loss")) == 4  # 8 mini-batches, the tutorial's loss every 2
    assert points(got["metrics"], "loss") == points(written, "loss")
    assert points(got["metrics"], "test/accuracy")[-1] == points(written, "test/accuracy")[-1]
    assert sorted(points(got["metrics"], n) for n in {r["name"] for r in written}) == sorted(
        points(written, n) for n in {r["name"] for r in written}
    )  # every other metric too, each exactly once
    summary = json.loads((run / "summary.json").read_text())
    assert got["tags"]["source_sha256"] == summary["source_sha256"] and got["unexpected"] == []
    assert "tracking off" not in r.stdout + r.stderr
    if sdk == "v2":
        assert got["status"] == "RUNNING"  # the job's run is Azure's to end, not the trainer's
    standin = f"azureml-{outputs.name.removeprefix('local-')}-standin".lower()  # local_run.py names it after the run
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={standin}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # the stand-in goes with the job
