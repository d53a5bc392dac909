"""The README's commands one after another in one clone, as a new user runs them: each run ends
with its own complete results, and none of them touches another's (runs never cross)."""

import hashlib
import os
import subprocess

from e2e_env import ROOT, UID, submit_env

RESULTS = {"model.pt", "metrics.jsonl", "summary.json", "curves.png"}


def fingerprint(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_the_readmes_commands_in_order_each_keep_their_own_results(dirs, registry, tmp_path):
    (tmp_path / "azure-config").mkdir()
    env = {
        **submit_env(tmp_path, registry),
        "DATA_DIR": str(dirs["data"]),
        "OUTPUTS_DIR": str(dirs["outputs"]),
        "CHECKPOINTS_DIR": str(dirs["checkpoints"]),
    }
    sequence = [
        ["make", "train", "EPOCHS=1", "ARGS=--fake-data 200"],
        ["make", "train-ddp", "EPOCHS=1", "PROCS=2", "ARGS=--fake-data 400"],
        ["make", "train-2node", "DDP_ARGS=--epochs 1 --fake-data 400 --batch-size 16"],
        ["make", "train", "MLFLOW=1", "EPOCHS=1", "ARGS=--fake-data 200"],  # no server up: one line, no harm
        ["make", "submit", "COMPUTE=local", f"REGISTRY={registry}", "TRAIN_ARGS=--epochs 1 --fake-data 64"],
    ]
    seen = {}
    for command in sequence:
        r = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, r.stderr
        (made,) = {p for p in dirs["outputs"].iterdir() if p.is_dir() and not p.is_symlink()} - seen.keys()
        assert RESULTS <= set(os.listdir(made)), (command, os.listdir(made))
        assert made.stat().st_uid == UID
        for folder, files in seen.items():  # every earlier run exactly as it was
            assert fingerprint(folder) == files, (command, folder)
        seen[made] = fingerprint(made)
    assert len(seen) == len(sequence)
    trained_here = [f.name for f in seen if f.name.startswith("run-")]
    assert sorted(p.name for p in dirs["checkpoints"].iterdir()) == sorted(trained_here)
