"""The run's outputs: folders, final weights, summary, plot, each written atomically and durably.

Every file goes to NAME.tmp, is fsynced, then renamed over NAME, and the folder is fsynced: a
crash, a power cut or a full disk leaves either the old file or the new one, never a part, and
no NAME.tmp behind. A write that fails is one OutputError naming the folder and the fix.
"""

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import torch

from errors import TrainerError

OUTPUT_NAMES = ("summary.json", "metrics.jsonl")  # what marks a folder as holding a run's results


class OutputError(TrainerError):
    """A folder the run cannot write; the message names it and says what to do."""


def write_failed(folder, error, flag):
    """The one-line OutputError for an OSError while writing into `folder` (given by `flag`)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space there (or mount a larger volume), or pass another {flag}"
    else:
        fix = f"make it writable, or pass another {flag}"
    return OutputError(f"cannot write to {folder}/ ({error.strerror or error}): {fix}")


def fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write, flag="--output-dir"):
    """write(binary file) into path.tmp, fsync it and its folder, rename over `path`, fsync the folder again."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before any name points at it
        fsync_dir(path.parent)
        os.replace(tmp, path)
        fsync_dir(path.parent)  # and the rename itself survives a power cut
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path.parent, e, flag) from None


def make_dirs(*folders_and_flags):
    """Create each (folder, flag) pair's folder, or one OutputError naming it."""
    for folder, flag in folders_and_flags:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            where = e.filename or folder
            raise OutputError(
                f"cannot create {where}: {e.strerror}; mount a writable folder there or pass another {flag}"
            ) from None


def claim(out_dir, overwrite):
    """A fresh start never appends to, or replaces, an earlier run's results unasked."""
    earlier = [Path(out_dir) / n for n in OUTPUT_NAMES if (Path(out_dir) / n).exists()]
    if earlier and not overwrite:
        raise OutputError(
            f"{out_dir}/ already holds results ({earlier[0].name}): pass another --output-dir, "
            f"--resume auto to continue that run, or --overwrite to replace it"
        )
    for p in earlier:
        p.unlink()


def weights_fingerprint(state_dict):
    """sha256 of every tensor's name and bytes, in order: equal fingerprints, bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_torch(obj, path, flag="--output-dir"):
    """torch.save into memory, then atomic_write: a full disk is then a plain OSError about our
    file, not a failure deep inside torch's zip writer (these files are a few hundred KB)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()), flag)


def write_summary(summary, path):
    atomic_write(path, lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))


def plot(metrics_path, png_path):
    """Training loss per step and test accuracy per epoch, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = Path(metrics_path).read_text().splitlines() if Path(metrics_path).exists() else []
    rows = [json.loads(line) for line in lines]  # none when a finished run is resumed into a new folder
    loss = [(r["step"], r["value"]) for r in rows if r["name"] == "loss"]
    acc = [(r["epoch"], r["value"]) for r in rows if r["name"] == "test/accuracy"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if loss:
        a.plot(*zip(*loss, strict=True))
    a.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    if acc:
        b.plot(*zip(*acc, strict=True), marker="o")
    b.set(title="test accuracy", xlabel="epoch", ylabel="accuracy")
    fig.tight_layout()
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
