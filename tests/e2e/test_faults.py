"""Faults end to end, in the image under compose: a full disk on the checkpoint or the output folder,
and a data folder that is a read-only mount holding only the archive (Azure ML v2's ro_mount).

A compose override file replaces the service's mount at the same target: a size-limited tmpfs for a
full disk, a read-only bind for the data. A full disk must end with exit 1 and one line naming the
folder and the fix, leave no *.tmp, and the checkpoint before the fault must still load: the same
container resumes from it and finishes.
"""

import re

import pytest

from e2e_env import TESTS_MOUNT, compose, compose_env

# A checkpoint is ~500 KB (weights + momentum), model.pt ~250 KB, metrics.jsonl a few KB.
FULL = {  # what fills up: (folder, tmpfs bytes, flags, the flag naming the folder)
    "checkpoint": ("checkpoints", 1_300_000, "--checkpoint-every 10", "--checkpoint-dir"),  # room for 2, not 3
    "model.pt": ("outputs", 128_000, "--checkpoint-every 0", "--output-dir"),  # metrics.jsonl fits, model.pt not
    # ~100 B a line; a tmpfs counts in 4 KiB pages, and run.json takes the first
    "metrics.jsonl": ("outputs", 8192, "--checkpoint-every 10 --log-interval 1", "--output-dir"),
}
# --output-dir outputs: the mount itself, not outputs/<run>/; checkpoints go to checkpoints/<run>/ still.
FLAGS = "--epochs 1 --fake-data 200 --log-interval 10 --threads 1 --output-dir outputs"  # a case's own flags win
# In one container (a tmpfs lives as long as it): train until the disk is full, show what is left,
# then resume from the last checkpoint with room to spare.
SCRIPT = """
python /app/src/train.py {flags} 2>/tmp/err; echo "rc=$?"
echo "--- stderr"; cat /tmp/err; echo "--- left"; ls -aR /work/{folder}; echo "--- resume"
python /app/src/train.py {flags} --output-dir /tmp/roomy/outputs --checkpoint-dir /tmp/roomy/checkpoints \\
  --resume "$(ls /work/checkpoints/*/step-*.pt | tail -n 1)"
echo "resumed rc=$?"
"""


def compose_run(dirs, tmp_path, mount, *args):
    """`docker compose run --rm ARGS` with `mount` (a compose volume, long syntax) in place of the
    train service's mount at the same target."""
    override = tmp_path / "mount.yaml"
    override.write_text(f"services:\n  train:\n    volumes:\n      - {mount}\n")
    return compose(compose_env(dirs), "-f", "compose.yaml", "-f", str(override), "run", "--rm", *args).stdout


@pytest.mark.parametrize("filling", FULL)
def test_a_full_disk_is_one_line_exit_1_and_the_previous_checkpoint_resumes(filling, dirs, tmp_path):
    folder, size, flags, flag = FULL[filling]
    tmpfs = f"{{type: tmpfs, target: /work/{folder}, tmpfs: {{size: {size}}}}}"
    script = SCRIPT.format(flags=f"{FLAGS} {flags}", folder=folder)
    out = compose_run(dirs, tmp_path, tmpfs, "train", "sh", "-c", script)
    first, rest = out.split("--- stderr\n")
    stderr, rest = rest.split("--- left\n")
    left, resumed = rest.split("--- resume\n")
    assert first.rstrip().endswith("rc=1"), out
    assert ("Finished Training" in first) == (filling == "model.pt"), out  # the others fail mid-epoch
    # The full folder is a tmpfs here, and the trainer says so (its files go with the container).
    assert f"warning: {folder if folder == 'outputs' else 'checkpoints/outputs-'}" in stderr, out
    stderr = "".join(line for line in stderr.splitlines(True) if not line.startswith("warning: "))
    where = "checkpoints/outputs-[0-9a-f-]+" if folder == "checkpoints" else folder  # the run's own folder
    assert re.fullmatch(
        f"error: cannot write to {where}/ \\(No space left on device\\): "
        f"free space there \\(or mount a larger volume\\), or pass another {flag}\n",
        stderr,
    ), out
    assert not [name for name in left.split() if name.endswith(".tmp")], left
    assert re.search(r"^resumed from /work/checkpoints/outputs-[0-9a-f-]+/step-\d+\.pt", resumed, re.M), out
    assert "Finished Training" in resumed and resumed.rstrip().endswith("resumed rc=0"), out


def test_a_read_only_data_mount_holding_only_the_archive_trains_and_stays_untouched(dirs, tmp_path):
    writable = f"{{type: bind, source: {dirs['data']}, target: /work/data}}"
    make_archive = "python /app/tests/cifar_fixture.py data 20 --archive".split()
    compose_run(dirs, tmp_path, writable, "-v", TESTS_MOUNT, "train", *make_archive)
    before = {p.name: p.stat().st_mtime_ns for p in dirs["data"].iterdir()}
    assert list(before) == ["cifar-10-python.tar.gz"]

    read_only = f"{{type: bind, source: {dirs['data']}, target: /work/data, read_only: true}}"
    train = "/app/tests/e2e/train_on_fixture.py --epochs 1 --log-interval 25 --no-download".split()
    out = compose_run(dirs, tmp_path, read_only, "-v", TESTS_MOUNT, "--entrypoint", "python", "train", *train)
    assert "data: extracted data/cifar-10-python.tar.gz into /tmp/cifar10-extracted" in out
    assert "Finished Training" in out
    assert {p.name: p.stat().st_mtime_ns for p in dirs["data"].iterdir()} == before
