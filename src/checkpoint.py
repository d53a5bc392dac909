"""Checkpoints end to end: file names, format, rotation, save, restore into model and optimizer.

A checkpoint is one self-describing dict (weights, optimizer, RNG, loop state, recipe), written
by rank 0 atomically and durably, loaded with weights_only=True, refused if its recipe differs.
Each run has a folder of its own (runs.py): rotation only ever sees that run's files.
Where the mount refuses renames, checkpoints are written in place (outputs.py): one that a kill cut short
does not load, or does not match the sha256 recorded in it, and `--resume auto` takes the one before it.
"""

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from errors import TrainerError
from outputs import save_torch

FORMAT = 1
KEEP = 2  # a crash or a full disk while writing one still leaves the one before it


@dataclass
class LoopState:
    """Where the loop is: all a checkpoint needs besides weights, optimizer and RNG to continue exactly."""

    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # mini-batches done in the current epoch
    global_step: int = 0
    running_loss: float = 0.0  # summed since the last `loss` line
    epoch_loss: float = 0.0  # summed over the epoch: train/epoch_loss at its end (older checkpoints lack it)
    train_seconds: float = 0.0


class CheckpointError(TrainerError):
    """A checkpoint that cannot be used; the message says what to do instead."""


class TornCheckpoint(CheckpointError):
    """A checkpoint file that is not whole: a kill cut its write short (or it was damaged since)."""


def content_sha256(obj, h=None):
    """sha256 of a checkpoint's contents: every tensor's bytes and every other value's repr, keys in order."""
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, torch.Tensor):
        h.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for key, value in obj.items():
            h.update(repr(key).encode())
            content_sha256(value, h)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            content_sha256(value, h)
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()


def newest_whole(ckpt_dir, recipe):
    """(path, contents) of the newest step-*.pt in ckpt_dir that is whole, or (None, None) (then `--resume auto`
    starts afresh). A torn one is passed over in one note line; one of another recipe is still refused."""
    for path in sorted(Path(ckpt_dir).glob("step-*.pt"), reverse=True):
        try:
            ckpt = read(path)
        except TornCheckpoint as e:
            print(f"note: {e}, a write cut short: --resume auto takes the checkpoint before it")
            continue
        return path, checked(path, ckpt, recipe)
    return None, None


def read(path):
    """The dict saved at `path`, or TornCheckpoint where it does not load or its sha256 does not match."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TornCheckpoint(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    recorded = ckpt.pop("sha256", None) if isinstance(ckpt, dict) else None
    if recorded is not None and recorded != content_sha256(ckpt):  # older checkpoints record none
        raise TornCheckpoint(f"{path} does not match the sha256 recorded in it")
    return ckpt


def load_checkpoint(path, recipe):
    """The checkpoint at `path` if it is whole and was made with the same recipe, else CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file; give an existing checkpoint or --resume auto")
    try:
        ckpt = read(path)
    except TornCheckpoint as e:
        raise CheckpointError(f"{e}: delete it, or resume from another file") from None
    return checked(path, ckpt, recipe)


def checked(path, ckpt, recipe):
    """ckpt, if it is this trainer's and was made with the same recipe, else CheckpointError."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a checkpoint of this trainer (format {FORMAT}): "
            f"resume from a file it wrote, or start without --resume"
        )
    made = ckpt["recipe"]
    diffs = [f"{k}={made.get(k)!r} (this run: {v!r})" for k, v in recipe.items() if made.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{path} was made with another recipe: {', '.join(diffs)}; "
            f"pass the same flags, or another --checkpoint-dir to start afresh"
        )
    return ckpt


def rotate(newest):
    """Drop the checkpoints beside `newest` but the KEEP - 1 before it; later steps too (a run resumed
    from an earlier file left them)."""
    found = sorted(newest.parent.glob("step-*.pt"))
    kept = {newest, *[p for p in found if p.name < newest.name][-(KEEP - 1) :]}
    for old in found:
        if old not in kept:
            old.unlink()


class Checkpoints:
    """The checkpoints of one run in `folder`; only the process with `write=True` (rank 0) writes."""

    def __init__(self, folder, recipe, write=True):
        self.folder, self.recipe, self.write = Path(folder), recipe, write

    def save(self, model, optimizer, state):
        """Write step-<global step>.pt, then drop the run's others but the one before it (KEEP); the path,
        or None if not ours. Later steps are dropped too: a run resumed from an earlier file left them."""
        if not self.write:
            return None
        path = self.folder / f"step-{state.global_step:08d}.pt"
        ckpt = {
            "format": FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "state": asdict(state),  # a plain dict: loadable with weights_only=True
            "recipe": self.recipe,
        }
        ckpt["sha256"] = content_sha256(ckpt)  # what tells a whole file from one a kill cut short (load_checkpoint)
        save_torch(ckpt, path, "--checkpoint-dir")
        rotate(path)
        return path

    def restore(self, path, model, optimizer):
        """Load `path` into model and optimizer, set torch's RNG; returns the LoopState it recorded."""
        ckpt = load_checkpoint(path, self.recipe)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        return LoopState(**ckpt["state"])
