"""The trainer's command line: every flag, checked alone and against the launcher's WORLD_SIZE,
before any work. Imports no torch, so that `make submit` can check TRAIN_ARGS in a blink.

The Azure tutorial's part 4 spells three flags its own way (--data_path, --learning_rate, and
--momentum, which is ours too): they are accepted as aliases, so its command line runs unchanged.
"""

import argparse
import math
import os
from pathlib import Path

EXIT_BAD_FLAGS = 2
# The flags that define the math; a checkpoint made with other values is refused.
# --epochs is not among them: resuming with more epochs extends a run.
RECIPE = ("batch_size", "lr", "momentum", "seed", "fake_data", "normalize")
OUTPUT_DIR_HELP = (
    "weights, metrics, summary, plot; default: a new outputs/<run>/ per run (outputs/latest names it), "
    "or ./outputs itself in an Azure ML job, which Azure ML uploads"
)
CHECKPOINT_DIR_HELP = (
    "the run's checkpoints go to DIR/<run>/; default: checkpoints "
    "(or, where it cannot be made, a folder under $TMPDIR, said in one line)"
)
DESCRIPTION = "Train the Azure ML tutorial's CIFAR-10 Net: same recipe, same `loss` metric and lines by default."


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not argparse's usage + error: every bad flag reads like every other error."""
        # Under torchrun every rank parses the same flags into one terminal: rank 0 alone says why.
        quiet = "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("RANK", "0") != "0"
        self.exit(EXIT_BAD_FLAGS, None if quiet else f"error: {message} (see --help)\n")


def integer(low, high=None):
    """An argparse type: an int in [low, high]."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def real(ok, bounds):
    """An argparse type: a finite float for which ok(value) holds; `bounds` says which in words."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def folder(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return text


def resume_from(text):
    if text != "auto" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file; give an existing checkpoint or 'auto'")
    return text


def build_parser():
    # No prefixes: `--epoch 1` is an error naming it, not --epochs taken silently.
    p = Parser(description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_recipe(p.add_argument)
    add_folders(p.add_argument)
    add_execution(p.add_argument)
    return p


def add_recipe(add):
    """The tutorial's recipe: what defines the math (see RECIPE), and how long."""
    add("--epochs", type=integer(1), default=2, help="passes over the training set")
    add("--batch-size", type=integer(1), default=4, help="images per SGD step (with several processes: in all)")
    add("--lr", "--learning_rate", type=real(lambda v: v > 0, "> 0"), default=0.001, help="SGD learning rate")
    add("--momentum", type=real(lambda v: 0 <= v < 1, "in [0, 1)"), default=0.9, help="SGD momentum")
    add("--seed", type=integer(0, 2**32 - 1), default=0, help="seeds weights and shuffling (CPU runs repeat exactly)")
    add("--normalize", action="store_true", help="also Normalize((0.5,)*3, (0.5,)*3), as the PyTorch blitz tutorial")
    add("--fake-data", type=integer(0), default=0, metavar="N", help="train on N synthetic images; 0 = CIFAR-10")


def add_folders(add):
    """Where the data is read, and where the run's results and checkpoints go (runs.py)."""
    add(
        "--data-dir",
        "--data_path",
        type=folder,
        default="data",
        help="holds cifar-10-batches-py/ or cifar-10-python.tar.gz",
    )
    add("--no-download", action="store_true", help="fail instead of downloading CIFAR-10 into --data-dir")
    add("--output-dir", type=folder, help=OUTPUT_DIR_HELP)
    add("--overwrite", action="store_true", help="allow replacing a finished run's results in --output-dir")
    add("--checkpoint-dir", type=folder, help=CHECKPOINT_DIR_HELP)
    add("--checkpoint-every", type=integer(0), default=2000, metavar="STEPS", help="also every STEPS steps; 0 = never")
    add(
        "--resume",
        type=resume_from,
        metavar="PATH|auto",
        help="a checkpoint, or 'auto': continue this run (--output-dir's, "
        "or the latest in outputs/, or the Azure ML job's) from its newest checkpoint, if any",
    )


def add_execution(add):
    """How the run executes and reports: none of it changes the arithmetic."""
    add("--log-interval", type=integer(1), default=2000, help="log the running loss every this many mini-batches")
    add("--pipeline", choices=("fast", "tutorial"), default="fast", help="tutorial: PIL transforms in a DataLoader")
    add("--workers", type=integer(0), default=2, help="DataLoader worker processes (--pipeline tutorial only)")
    add(
        "--threads",
        type=integer(0),
        default=0,
        help="torch CPU threads (0 = 1 below batch 32 per rank, else its share of the cores)",
    )
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available, else cpu")
    add("--progress", choices=("auto", "on", "off"), default="auto", help="live progress bar (auto = on a TTY)")
    add("--dist-timeout", type=integer(1), default=1800, help="seconds a rank waits for the others (multi-process)")


def recipe(args):
    """What a checkpoint must have been made with to be resumed by this run."""
    return {"model": "Net", **{k: getattr(args, k) for k in RECIPE}}


def parse_args(argv=None, environ=os.environ):
    """The flags, every one checked (alone, and against the launcher's WORLD_SIZE) before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    world = int(environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.pipeline == "tutorial":
        parser.error("--pipeline tutorial runs in one process: use the default fast pipeline with torchrun")
    if args.batch_size < world:
        parser.error(f"--batch-size {args.batch_size} is the global batch: give at least one image per rank ({world})")
    return args
