"""Checkpoints end to end: file names, format, rotation, save, restore into model and optimizer.

A checkpoint is one self-describing dict (weights, optimizer, RNG, loop state, recipe), written
by rank 0 atomically and durably, loaded with weights_only=True, refused if its recipe differs.
Each run has a folder of its own (runs.py): rotation only ever sees that run's files.
"""

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


def find_latest(ckpt_dir):
    """The newest step-*.pt in ckpt_dir, or None (then `--resume auto` starts afresh)."""
    found = sorted(Path(ckpt_dir).glob("step-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path, recipe):
    """The checkpoint at `path` if it was made with the same recipe, else CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file; give an existing checkpoint or --resume auto")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(e).__name__}): delete it, or resume from another file"
        ) from None
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
