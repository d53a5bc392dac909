"""Faults end to end, in the image under compose: a full disk on the checkpoint or the output folder.

A size-limited tmpfs replaces the folder's mount (a compose override file, merged by mount target).
The run must end with exit 1 and one line naming the folder and the fix, leave no *.tmp, and the
checkpoint before the fault must still load: the same container resumes from it and finishes.
"""

import re
import subprocess
from pathlib import Path

import pytest

from e2e_env import compose_env

ROOT = Path(__file__).resolve().parents[2]
# A checkpoint is ~500 KB (weights + momentum), model.pt ~250 KB, metrics.jsonl a few KB.
FULL = {  # folder: (tmpfs bytes, flags, the flag naming it)
    "checkpoints": (1_300_000, "--checkpoint-every 10", "--checkpoint-dir"),  # two checkpoints fit, not a third
    "outputs": (128_000, "--checkpoint-every 0", "--output-dir"),  # metrics.jsonl fits, model.pt does not
}
FLAGS = "--epochs 1 --fake-data 200 --log-interval 10 --threads 1"
# In one container (a tmpfs lives as long as it): train until the disk is full, show what is left,
# then resume from the last checkpoint with room to spare.
SCRIPT = """
python /app/src/train.py {flags} 2>/tmp/err; echo "rc=$?"
echo "--- stderr"; cat /tmp/err; echo "--- left"; ls -a /work/{folder}; echo "--- resume"
python /app/src/train.py {flags} --output-dir /tmp/roomy/outputs --checkpoint-dir /tmp/roomy/checkpoints \\
  --resume "$(ls /work/checkpoints/step-*.pt | tail -n 1)"
echo "resumed rc=$?"
"""


def run_with_full_disk(dirs, tmp_path, folder):
    size, flags, _ = FULL[folder]
    override = tmp_path / "full-disk.yaml"
    override.write_text(
        f"services:\n  train:\n    volumes:\n      - {{type: tmpfs, target: /work/{folder}, tmpfs: {{size: {size}}}}}\n"
    )
    script = SCRIPT.format(flags=f"{FLAGS} {flags}", folder=folder)
    r = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "-f", str(override), "run", "--rm", "train", "sh", "-c", script],
        cwd=ROOT, env=compose_env(dirs), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("folder", ["checkpoints", "outputs"])
def test_a_full_disk_is_one_line_exit_1_and_the_previous_checkpoint_resumes(folder, dirs, tmp_path):
    out = run_with_full_disk(dirs, tmp_path, folder)
    first, rest = out.split("--- stderr\n")
    stderr, rest = rest.split("--- left\n")
    left, resumed = rest.split("--- resume\n")
    assert first.rstrip().endswith("rc=1"), out
    flag = FULL[folder][2]
    assert stderr == (
        f"error: cannot write to {folder}/ (No space left on device): "
        f"free space there (or mount a larger volume), or pass another {flag}\n"
    ), out
    assert not [name for name in left.split() if name.endswith(".tmp")], left
    assert re.search(r"^resumed from /work/checkpoints/step-\d+\.pt", resumed, re.M), out
    assert "Finished Training" in resumed and resumed.rstrip().endswith("resumed rc=0"), out
