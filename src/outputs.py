"""The run's outputs: folders, final weights, summary, plot, each written atomically and durably.

Every file goes to NAME.tmp, is fsynced, then renamed over NAME, and the folder is fsynced: a
crash, a power cut or a full disk leaves either the old file or the new one, never a part, and
no NAME.tmp behind. A write that fails is one OutputError naming the folder and the fix.

Where the folder's mount refuses the rename (blob storage behind FUSE has none), the file is written
in place instead, said once per folder: a kill can then leave a part of it under its own name, and
every reader tells a part from a whole file (docs/runtime.md, "Checkpoints and outputs on blob
storage mounts"): a checkpoint torch.load cannot read, or whose sha256 does not match the one recorded
in it, is passed over for the one before it; a summary.json that does not parse is a run not finished;
run.json and outputs/latest that do not parse name no run; metrics.jsonl's torn last line is dropped.
"""

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import torch

from errors import TrainerError

SUMMARY = "summary.json"  # a run's last output: where it is, the run is finished
# What marks a folder as holding a run's results: any one of them (an old clone may hold weights alone).
OUTPUT_NAMES = (SUMMARY, "metrics.jsonl", "model.pt", "curves.png")
TORN = ".tmp"  # atomic_write's NAME.tmp: only a killed process leaves one
# A folder fsync that a FUSE mount refuses: blobfuse2 answers EIO when it cannot sync (its libfuse
# handler's fsyncdir), others EINVAL or ENOTSUP. The file itself was fsynced before the rename.
FSYNC_DIR_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF)
# A rename that a FUSE mount of object storage refuses: ENOTSUP/EOPNOTSUPP (no rename operation),
# EPERM and ENOSYS (object-store mounts that do not implement it), EXDEV (two names on different backends).
RENAME_REFUSED = (errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSYS)
# File systems whose files go with the container: its own root (overlay) and a tmpfs such as /tmp.
VOLATILE = ("overlay", "tmpfs", "aufs", "ramfs")
MOUNTINFO = "/proc/self/mountinfo"


class OutputError(TrainerError):
    """A folder the run cannot write; the message names it and says what to do."""


def write_failed(folder, error, flag):
    """The one-line OutputError for an OSError while writing into `folder` (given by `flag`)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space there (or mount a larger volume), or pass another {flag}"
    else:
        fix = f"make it writable, or pass another {flag}"
    return OutputError(f"cannot write to {folder}/ ({error.strerror or error}): {fix}")


_fsync_dir_refused = set()  # folders whose mount refused a folder fsync: said once, then skipped


def fsync_dir(folder):
    """fsync a folder, so that a rename in it survives a power cut. A FUSE mount that refuses
    (blob storage: renames are copies there anyway) costs one note, never the run."""
    if folder in _fsync_dir_refused:
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in FSYNC_DIR_REFUSED:
            raise
        _fsync_dir_refused.add(folder)
        print(f"note: {folder}/ cannot fsync folders ({e.strerror}; a FUSE mount?): files are still fsynced")
    finally:
        os.close(fd)


_in_place = set()  # folders whose mount refused a rename: said once, then their files are written in place


def replaced(tmp, path):
    """os.replace(tmp, path): True, or False (tmp removed, said once for the folder) where the mount refuses it."""
    try:
        os.replace(tmp, path)
        return True
    except OSError as e:
        if e.errno not in RENAME_REFUSED:
            raise
        reason = e.strerror
    tmp.unlink(missing_ok=True)
    _in_place.add(path.parent)
    print(
        f"note: {path.parent}/ refuses renames ({reason}; a blob storage mount?): its files are written in place, "
        f"and one a kill cut short is told from a whole one when read (a torn checkpoint gives way to the one before)"
    )
    return False


def write_file(path, write):
    """write(binary file) into `path`, fsynced: the data is on disk before anything goes on."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path, write, flag="--output-dir"):
    """write(binary file) into path.tmp, fsync it and its folder, rename over `path`, fsync the folder again.
    Where the folder's mount refuses renames: write(binary file) into `path` itself, fsynced."""
    path = Path(path)
    tmp = path.with_name(path.name + TORN)
    try:
        # A folder that holds no file does not outlive its mount on blob storage: a checkpoint folder made
        # at start and written only later is made again.
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in _in_place:
            write_file(tmp, write)
            fsync_dir(path.parent)
        if path.parent in _in_place or not replaced(tmp, path):
            write_file(path, write)
        fsync_dir(path.parent)  # the rename, or the new name, survives a power cut
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path.parent, e, flag) from None


def finished(out_dir):
    """Whether out_dir holds a finished run: its summary.json, written last, is there and whole (where renames
    are refused, a kill can leave a part of it, which does not parse)."""
    try:
        return isinstance(json.loads((Path(out_dir) / SUMMARY).read_text()), dict)
    except (OSError, ValueError):
        return False


def remove_torn(folder):
    """Remove the NAME.tmp files a killed atomic_write left in folder (the names it had not replaced yet)."""
    for tmp in Path(folder).glob(f"*{TORN}"):
        tmp.unlink(missing_ok=True)


def mounts(mountinfo=MOUNTINFO):
    """{mount point: file system type} of this process (Linux's /proc/self/mountinfo), {} elsewhere."""
    try:
        return mounts_from(Path(mountinfo).read_text())
    except OSError:
        return {}


def mounts_from(text):
    found = {}
    for line in text.splitlines():
        fields = line.split()
        fs = fields[fields.index("-") + 1]  # after the optional fields' "-" separator
        found[fields[4].replace("\\040", " ")] = fs
    return found


def mount_of(path, table):
    """(mount point, file system type) holding path: the longest mount point above it."""
    path = os.path.abspath(path)
    points = [m for m in table if path == m or path.startswith(m.rstrip("/") + "/")]
    point = max(points, key=len, default="/")
    return point, table.get(point, "")


def in_container():
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def volumes(table):
    """The folders mounted into this container for data (not the system's own files)."""
    system = ("/proc", "/sys", "/dev", "/etc/")
    return sorted(m for m, fs in table.items() if m != "/" and fs not in VOLATILE and not m.startswith(system))


def vanishing(folder, table=None, container=None):
    """None, or one line saying that folder lives in the container itself and goes with it."""
    table = mounts() if table is None else table
    if not (in_container() if container is None else container) or not table:
        return None
    point, fs = mount_of(folder, table)
    if fs not in VOLATILE:
        return None
    where = "on a tmpfs" if fs in ("tmpfs", "ramfs") else "in the container's own file system"
    keep = ", ".join(volumes(table)) or "none; docker run -v HOST_FOLDER:/work/outputs"
    return f"{folder} is {where}: its files are lost with the container; write under a mounted folder ({keep})"


def make_dirs(*folders_and_flags):
    """Create each (folder, flag) pair's folder, or one OutputError naming it."""
    for folder, flag in folders_and_flags:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            where, table = e.filename or folder, mounts()
            keep = f" under a mounted folder ({', '.join(volumes(table))})" if in_container() and table else ""
            raise OutputError(f"cannot create {where}: {e.strerror}; pass another {flag}{keep}") from None


def claim(out_dir, overwrite, remove=True):
    """A fresh start never appends to, or replaces, an earlier run's results unasked.
    remove=False: only check (before any work); True: also clear them (--overwrite)."""
    earlier = [Path(out_dir) / n for n in OUTPUT_NAMES if (Path(out_dir) / n).exists()]
    if earlier and not overwrite:
        raise OutputError(
            f"{out_dir}/ already holds results ({earlier[0].name}): pass another --output-dir, "
            f"--resume auto to continue that run, or --overwrite to replace it"
        )
    for p in earlier if remove else ():
        p.unlink()
    if remove:
        remove_torn(out_dir)


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


def write_json(obj, path, flag="--output-dir"):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()), flag)


def plot(metrics_path, png_path):
    """Training loss per step and test accuracy per epoch, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = Path(metrics_path).read_text().splitlines() if Path(metrics_path).exists() else []
    rows = [json.loads(line) for line in lines]  # none when a finished run is resumed into a new folder
    series = {n: [(r["step"], r["value"]) for r in rows if r["name"] == n] for n in ("loss", "train/epoch_loss")}
    acc = [(r["epoch"], r["value"]) for r in rows if r["name"] == "test/accuracy"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    # The tutorial's `loss` (every --log-interval mini-batches), and each epoch's mean: a run too
    # short for the first has the second, so the panel is never empty.
    for (name, points), style in zip(series.items(), ({}, {"marker": "o"}), strict=True):
        if points:
            a.plot(*zip(*points, strict=True), label=name, **style)
    if any(series.values()):
        a.legend()
    a.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    if acc:
        b.plot(*zip(*acc, strict=True), marker="o")
    b.set(title="test accuracy", xlabel="epoch", ylabel="accuracy")
    # Fixed margins that fit these labels: tight_layout measures every tick label, the slowest part of a
    # run's last second.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
