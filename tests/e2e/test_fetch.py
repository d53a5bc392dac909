"""`make fetch JOB=NAME`, then `make compare`: a laptop run and the same recipe rehearsed through
`make submit COMPUTE=local`, fetched into outputs/NAME/, are "the same run". The refusals (no JOB, an
unknown job, a folder that already holds a run) are one error line each, and change nothing."""

import hashlib
import os
import re
import shutil
import subprocess

from e2e_env import ROOT, compose, compose_env, copy_submit_tree, submit_sh

RECIPE = "--fake-data 400 --epochs 1 --threads 1"
RESULTS = {"summary.json", "metrics.jsonl", "model.pt", "curves.png"}


def make(tree, *args, **env):
    """make in the copied tree, with no Azure or REPLACE setting taken from the machine running the tests."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "LOCAL_", "REPLACE", "SDK"))}
    cmd = ["make", "--no-print-directory", *args]
    return subprocess.run(cmd, cwd=tree, env={**clean, **env}, capture_output=True, text=True, timeout=300)


def tree_with_makefile(root):
    tree = copy_submit_tree(root)
    shutil.copy(ROOT / "Makefile", tree / "Makefile")
    return tree


def fingerprint(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_a_rehearsed_job_fetched_is_the_laptop_run(dirs, registry, tmp_path):
    outputs = dirs["outputs"]
    compose(compose_env(dirs), "run", "--rm", "train", *RECIPE.split())
    tree = tree_with_makefile(tmp_path / "tree")
    r = submit_sh(
        tree, registry, timeout=900, COMPUTE="local", TRAIN_ARGS=RECIPE,
        OUTPUTS_DIR=str(outputs),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    job = re.search(r"^run (\S+) ended 0: outputs in ", r.stderr, re.M).group(1)  # how the user learns it

    r = make(tree, "fetch", "COMPUTE=local", f"JOB={job}", f"OUTPUTS_DIR={outputs}")
    assert r.returncode == 0, r.stderr
    fetched = outputs / job
    assert RESULTS <= set(os.listdir(fetched)) and all(p.is_file() for p in fetched.iterdir())  # flat
    assert all(p.stat().st_uid == os.getuid() for p in [fetched, *fetched.iterdir()])  # whoever ran make
    assert fingerprint(fetched) == fingerprint(outputs / f"local-{job}")
    assert not [p for p in outputs.iterdir() if p.name.startswith(".fetch-")]

    r = make(tree, "compare", f"A={outputs}/latest", f"B={fetched}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("the same run: bit-identical weights"), r.stdout

    before = fingerprint(fetched)
    r = make(tree, "fetch", "COMPUTE=local", f"JOB={job}", f"OUTPUTS_DIR={outputs}")
    assert r.returncode != 0 and errors(r) == [
        f"error: {fetched}/ already holds files: move it away, or fetch again with REPLACE=1"
    ]
    assert fingerprint(fetched) == before


def errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_no_job_an_unknown_job_or_a_taken_folder_is_one_error_line_and_changes_nothing(tmp_path):
    """Host-side only (COMPUTE=local): no container, no registry."""
    tree = tree_with_makefile(tmp_path / "tree")
    outputs = tmp_path / "outputs"
    (outputs / "local-job_1").mkdir(parents=True)
    (outputs / "local-job_1" / "summary.json").write_text("{}\n")
    (outputs / "taken").mkdir()
    (outputs / "taken" / "summary.json").write_text("earlier\n")
    (outputs / "local-taken").mkdir()
    (outputs / "local-taken" / "summary.json").write_text("later\n")
    (outputs / "local-empty").mkdir()
    before = sorted(p.relative_to(outputs) for p in outputs.rglob("*"))
    cases = {
        "": "error: no job named: make fetch JOB=NAME",
        "../job_1": "error: JOB=../job_1 is not a job name",
        "nope": f"error: no rehearsed job nope: {outputs}/local-nope/ does not exist",
        "taken": f"error: {outputs}/taken/ already holds files: move it away, or fetch again with REPLACE=1",
        "empty": "error: job empty has no ./outputs files",
    }
    for job, error in cases.items():
        r = make(tree, "fetch", "COMPUTE=local", f"JOB={job}", f"OUTPUTS_DIR={outputs}")
        assert r.returncode != 0 and len(errors(r)) == 1 and errors(r)[0].startswith(error), (job, r.stderr)
    assert sorted(p.relative_to(outputs) for p in outputs.rglob("*")) == before
    assert (outputs / "taken" / "summary.json").read_text() == "earlier\n"

    r = make(tree, "fetch", "COMPUTE=local", "JOB=taken", f"OUTPUTS_DIR={outputs}", "REPLACE=1")
    assert r.returncode == 0, r.stderr
    assert (outputs / "taken" / "summary.json").read_text() == "later\n"
