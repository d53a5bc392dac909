"""Self-describing checkpoints, written atomically, loaded with weights_only=True."""

import os
from pathlib import Path

import torch

FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says what to do instead."""


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
