"""Which run this is: its name, its folders, and what `--resume auto` continues (docs/runtime.md).

A run's name is its checkpoint folder, <checkpoint-dir>/<name>/, so runs that share a checkpoint
folder never see, rotate or resume each other's files. The name comes from:
- Azure ML's run id (AZUREML_RUN_ID), when there is no --output-dir: a preempted job that restarts
  gets the same id, so it continues itself, and a new job never continues an old one;
- the output folder, when --output-dir is given: a fresh run writes its name there (run.json), and
  `--resume auto` reads it back; a folder without one holds no run, so the run starts afresh;
- otherwise a new folder per run, outputs/<name>/, with outputs/latest naming the newest, as Azure
  ML and Lightning keep one folder per run: the same command run twice keeps both runs.
"""

import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import outputs
from checkpoint import newest_whole
from cli import recipe

RUN_FILE = "run.json"  # in the output folder: the name of the run whose results it holds
LATEST = "latest"  # outputs/latest -> the newest run's folder (by default only)
DEFAULT_OUTPUTS = "outputs"
DEFAULT_CHECKPOINTS = "checkpoints"
# For a new run, given a finished one: by default a new folder comes with it; a named folder is refused
# without --overwrite, so the advice must not send a user back to the refusal.
NEW_RUN = {True: "leave out --resume for a new run", False: "pass another --output-dir (or --overwrite) for a new run"}


@dataclass
class RunFolders:
    name: str | None  # None until create() names a new run
    out_dir: Path | None  # None until create() makes a new outputs/<run>/
    ckpt_root: Path  # --checkpoint-dir; the run's checkpoints are in ckpt_root/name
    resume: Path | None  # the checkpoint to continue from, if any
    finished: str | None = None  # set when `--resume auto` found the run complete: why nothing is done
    new: bool = False  # a fresh start: create() claims out_dir
    overwrite: bool = False  # and may replace what an earlier run left there
    ckpt_default: bool = True  # --checkpoint-dir not given: create() may fall back to $TMPDIR

    @property
    def ckpt_dir(self):
        return self.ckpt_root / self.name


def safe(name):
    """A run id as a folder name (Azure ML's are already; anything else is replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]


def utc_stamp():
    """YYYYmmdd-HHMMSS, UTC: the time part of every run name."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def new_name(root):
    """run-YYYYmmdd-HHMMSS (UTC), made unique in root by a suffix; the folder is created (claimed)."""
    stamp = f"run-{utc_stamp()}"
    for n in range(1, 1000):
        name = stamp if n == 1 else f"{stamp}-{n}"
        try:
            (root / name).mkdir(parents=True)
            return name
        except FileExistsError:
            continue
    raise outputs.OutputError(f"{root}/ has 999 runs started this second: pass --output-dir")


def read_name(out_dir):
    """The run named in out_dir/run.json, or None."""
    try:
        return json.loads((Path(out_dir) / RUN_FILE).read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_name(root):
    """The run outputs/latest points to (a symbolic link, or a file naming it), or None."""
    link = Path(root) / LATEST
    try:
        if link.is_symlink():
            return os.readlink(link)
        text = link.read_text()
    except OSError:
        return None
    # Written in place (a mount that refuses renames), a kill can leave a part of the name, which may be
    # another run's: only a whole line names a run.
    return (text.strip() or None) if text.endswith("\n") else None


def point_latest(root, name):
    """outputs/latest -> name, replaced atomically; a file holding the name where links are refused, written
    in place where renames are."""
    link, tmp = Path(root) / LATEST, Path(root) / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(name, target_is_directory=True)
    except OSError:
        tmp.write_text(name + "\n")
    if not outputs.replaced(tmp, link):
        link.unlink(missing_ok=True)  # a link would be followed: the file would be written into the run it names
        outputs.atomic_write(link, lambda f: f.write(f"{name}\n".encode()))


def plan(args, environ=os.environ):
    """Which run this is and where its files go, decided before any work and writing nothing:
    a bad folder or results that would be replaced unasked are refused here (OutputError)."""
    ckpt_root = Path(args.checkpoint_dir or DEFAULT_CHECKPOINTS)
    given = Path(args.resume) if args.resume not in (None, "auto") else None
    azure_id = environ.get("AZUREML_RUN_ID")
    if args.output_dir is None and not azure_id:  # by default: the latest run, or a new folder
        name = latest_name(DEFAULT_OUTPUTS) if args.resume == "auto" else None
        found = name and continue_run(args, name, Path(DEFAULT_OUTPUTS) / name, ckpt_root, NEW_RUN[True])
        return found or RunFolders(None, None, ckpt_root, given, new=True, ckpt_default=not args.checkpoint_dir)
    out_dir = Path(args.output_dir or DEFAULT_OUTPUTS)
    name = safe(azure_id) if args.output_dir is None else read_name(out_dir)
    if name and args.resume == "auto":
        found = continue_run(args, name, out_dir, ckpt_root, NEW_RUN[args.output_dir is None])
        if found:
            return found
    # `--resume auto` of a run that wrote no checkpoint starts it again: its partial results go.
    again = args.resume == "auto" and name is not None
    if again and outputs.finished(out_dir):
        why = f"run {name} has finished ({out_dir}/): {NEW_RUN[False]}"
        return RunFolders(name, out_dir, ckpt_root, None, why)
    overwrite = args.overwrite or again
    outputs.claim(out_dir, overwrite, remove=False)
    name = name if args.output_dir is None else None  # on Azure ML the job's run; here a new one
    return RunFolders(
        name, out_dir, ckpt_root, given, new=True, overwrite=overwrite, ckpt_default=not args.checkpoint_dir
    )


def create(folders):
    """Make the run's folders, name a new run (run.json, outputs/latest), clear what --overwrite replaces."""
    if not folders.new:
        outputs.make_dirs((folders.out_dir, "--output-dir"), (folders.ckpt_dir, "--checkpoint-dir"))
        for folder in (folders.out_dir, folders.ckpt_dir):  # a resumed run owns both: what a kill tore goes
            outputs.remove_torn(folder)
        return folders
    out_dir, name = folders.out_dir, folders.name
    if out_dir is None:
        root = Path(DEFAULT_OUTPUTS)
        outputs.make_dirs((root, "--output-dir"))
        name = new_name(root)
        point_latest(root, name)
        out_dir = root / name
    else:
        outputs.make_dirs((out_dir, "--output-dir"))
        outputs.claim(out_dir, folders.overwrite)
        name = name or safe(f"{out_dir.resolve().name}-{utc_stamp()}-{secrets.token_hex(2)}")
    folders = checkpoint_folder(replace(folders, name=name, out_dir=out_dir))
    outputs.write_json({"run": name}, out_dir / RUN_FILE)
    return folders


def checkpoint_folder(folders):
    """Make the run's checkpoint folder. Where the default one cannot be made (a job running as uid 9000
    in a working directory root owns), a folder under $TMPDIR instead, said in one line: a run is never
    refused over a folder nobody asked for. A --checkpoint-dir that was given is made or refused."""
    try:
        outputs.make_dirs((folders.ckpt_dir, "--checkpoint-dir"))
        return folders
    except outputs.OutputError as e:
        if not folders.ckpt_default:
            raise
        fallback = replace(folders, ckpt_root=Path(tempfile.gettempdir()) / DEFAULT_CHECKPOINTS)
        outputs.make_dirs((fallback.ckpt_dir, "--checkpoint-dir"))
        print(f"note: {e}; this run's checkpoints go to {fallback.ckpt_dir}/ instead")
        return fallback


def continue_run(args, name, out_dir, ckpt_root, new_run):
    """RunFolders continuing run `name` from its newest checkpoint; None if it has none. A run is finished
    when its summary.json, written last, is there: one whose training is done but whose outputs are not
    (killed while writing them) continues into writing them."""
    path, ckpt = newest_whole(ckpt_root / name, recipe(args))
    if path is None:
        return None
    state = ckpt["state"]  # a dict: LoopState's fields
    done = None
    if state["epoch"] >= args.epochs and outputs.finished(out_dir):
        done = (
            f"run {name} has finished all {state['epoch']} epochs ({out_dir}/): nothing to resume; "
            f"pass --epochs {state['epoch'] + 1} or more to extend it, or {new_run}"
        )
    return RunFolders(name, out_dir, ckpt_root, path, done)
