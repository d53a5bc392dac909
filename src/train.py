"""Train the PyTorch CIFAR-10 tutorial's Net: same recipe and loss lines by default.

    python train.py                      # the tutorial: 2 epochs, batch 4, SGD(0.001, 0.9)
    python train.py --fake-data 2000     # no data set needed: synthetic images, same path
    python train.py --resume auto        # continue from the latest checkpoint

Runs the same under `docker compose run train` and on Azure ML (ScriptRunConfig).
"""

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import time
from contextlib import nullcontext
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import data
from checkpoint import CheckpointError, find_latest, load_checkpoint, save_atomic
from metrics import Metrics, azureml_run, mlflow_tracking
from model import Net
from provenance import provenance

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint saved, rerun with --resume
# The flags that define the math; a checkpoint made with other values is refused.
# --epochs is not among them: resuming with more epochs extends a run.
RECIPE = ("batch_size", "lr", "momentum", "seed", "fake_data")


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--epochs", type=positive_int, default=2, help="passes over the training set")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="images per SGD step (with several processes: in all, shared among them)",
    )
    p.add_argument("--lr", type=positive_float, default=0.001, help="SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and shuffling (CPU runs repeat exactly)")
    p.add_argument(
        "--data-dir",
        default="data",
        help="holds cifar-10-batches-py/ or cifar-10-python.tar.gz; downloaded there if absent",
    )
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument(
        "--fake-data",
        type=int,
        default=0,
        metavar="N",
        help="train on N synthetic images (test on N/5) instead of CIFAR-10; 0 = real data",
    )
    p.add_argument(
        "--output-dir", default="outputs", help="weights, metrics, summary, plot (Azure ML uploads ./outputs)"
    )
    p.add_argument("--overwrite", action="store_true", help="allow replacing a finished run's results in --output-dir")
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints",
        help="where checkpoints go (on Azure ML: a mounted datastore path that survives preemption)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=2000,
        metavar="STEPS",
        help="also checkpoint every this many steps (0 = only at epoch ends and on SIGTERM/SIGINT)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="PATH|auto",
        help="a checkpoint file, or 'auto': the latest in --checkpoint-dir (a fresh start if there is none)",
    )
    p.add_argument(
        "--log-interval", type=positive_int, default=2000, help="print the running loss every this many mini-batches"
    )
    p.add_argument(
        "--pipeline",
        choices=("fast", "tutorial"),
        default="fast",
        help="fast: decoded tensors, randperm + slicing; tutorial: per-image PIL transforms in a DataLoader",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (--pipeline tutorial only)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available, else cpu"
    )
    p.add_argument(
        "--progress", choices=("auto", "on", "off"), default="auto", help="live progress bar (auto = on a TTY)"
    )
    p.add_argument(
        "--dist-timeout",
        type=positive_int,
        default=120,
        help="seconds a rank waits for the others before giving up (torchrun / Azure ML multi-process runs)",
    )
    return p.parse_args(argv)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 1


def load_data(args):
    """(x_train, y_train, x_test, y_test, tutorial datasets or None)."""
    if args.fake_data:
        x, y = data.fake_cifar10(args.fake_data, seed=args.seed)
        xt, yt = data.fake_cifar10(max(args.fake_data // 5, 1), seed=args.seed + 1)
        sets = (data.TensorImages(x, y, data.TUTORIAL_TRANSFORM), None)
        return x, y, xt, yt, sets
    transform = data.TUTORIAL_TRANSFORM if args.pipeline == "tutorial" else None
    download = not args.no_download
    train_set = data.open_cifar10(args.data_dir, train=True, download=download, transform=transform)
    test_set = data.open_cifar10(args.data_dir, train=False, download=download, transform=transform)
    x, y = data.to_tensors(train_set)
    xt, yt = data.to_tensors(test_set)
    return x, y, xt, yt, (train_set, test_set)


def epoch_order(n, seed, epoch):
    """A fresh permutation each epoch, derived from (seed, epoch) so that a resumed run draws the same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def make_optimizer(model, lr, momentum):
    """The tutorial's SGD; foreach updates all parameters in one call: same arithmetic, fewer ops."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, foreach=True)


def train_step(model, optimizer, criterion, inputs, labels, autocast=None):
    """One SGD step, the tutorial's; returns the loss tensor (reading it syncs with the device)."""
    optimizer.zero_grad()
    with autocast or nullcontext():
        loss = criterion(model(inputs), labels)
    loss.backward()
    optimizer.step()
    return loss


def weights_fingerprint(model):
    """sha256 of every parameter's bytes, in order: equal fingerprints, bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def evaluate(model, x, y, device, autocast, batch_size=1000):
    """Accuracy overall and per class, for any batch size (no per-class loop over a batch of 4)."""
    model.eval()
    correct = torch.zeros(10, dtype=torch.int64)
    total = torch.bincount(y, minlength=10)
    for i in range(0, len(x), batch_size):
        xb, yb = data.normalize(x[i : i + batch_size]).to(device), y[i : i + batch_size]
        with autocast:
            pred = model(xb).argmax(1).cpu()
        correct += torch.bincount(yb[pred == yb], minlength=10)
    model.train()
    per_class = {c: (correct[i] / total[i]).item() if total[i] else float("nan") for i, c in enumerate(data.CLASSES)}
    return (correct.sum() / total.sum()).item(), per_class


def plot(metrics_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    loss = [(r["step"], r["value"]) for r in rows if r["name"] == "train/loss"]
    acc = [(r["epoch"], r["value"]) for r in rows if r["name"] == "test/accuracy"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if loss:
        a.plot(*zip(*loss, strict=True))
    a.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    if acc:
        b.plot(*zip(*acc, strict=True), marker="o")
    b.set(title="test accuracy", xlabel="epoch", ylabel="accuracy")
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)


class Distributed:
    """torch.distributed as torchrun and Azure ML's PyTorchConfiguration set it up, from the environment.

    WORLD_SIZE/RANK/LOCAL_RANK (and MASTER_ADDR/MASTER_PORT for the rendezvous) are read with
    defaults, so a plain `python train.py` is a world of one and touches none of this.
    """

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        self.main = self.rank == 0  # every side effect (prints, metrics, files) is rank 0's
        self.device = "cpu"

    def init(self, device, timeout_s):
        self.device = device  # nccl reduces CUDA tensors only
        if self.on:
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))

    def mean(self, value):
        """The mean over ranks of a float (every rank must call it at the same step)."""
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag):
        if not self.on:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self):
        if self.on and dist.is_initialized():
            dist.destroy_process_group()


class StopFlag:
    """SIGTERM (docker stop, preemption) and SIGINT end the step in flight, then save and exit."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum

    def install(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self)


def main(argv=None):
    args = parse_args(argv)
    ddp = Distributed()
    try:
        return run(args, ddp)
    except RuntimeError as e:  # gloo and nccl report a lost peer as RuntimeError (DistBackendError)
        if not ddp.on:
            raise
        # gloo prefixes its source location: keep the first sentence after it
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0]).split(". ")[0]
        return fail(
            f"rank {ddp.rank} of {ddp.world} lost the other ranks ({reason}): one of them failed "
            f"or was stopped; see its log, then rerun all ranks (with --resume auto)"
        )
    finally:
        ddp.close()


def scaled_cross_entropy(outputs, labels, scale):
    """Sum over the rank's share times world/global batch: DDP's gradient mean is then the
    gradient of the global batch's mean loss, as in one process, whatever the share sizes."""
    return nn.functional.cross_entropy(outputs, labels, reduction="sum") * scale


def run(args, ddp):
    config = vars(args).copy()
    say = print if ddp.main else (lambda *a, **k: None)
    out_dir, ckpt_dir = Path(args.output_dir), Path(args.checkpoint_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return fail(f"cannot create {e.filename}: {e.strerror}; mount a writable folder there or pass another path")

    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda but no CUDA device is visible: use --device cpu or auto")
    else:
        device = args.device
    on_cuda = device == "cuda"
    if ddp.on:
        if args.pipeline == "tutorial":
            return fail("--pipeline tutorial runs in one process: use the default fast pipeline with torchrun")
        if args.batch_size < ddp.world:
            return fail(
                f"--batch-size {args.batch_size} is the global batch: give at least one image per rank "
                f"({ddp.world} ranks)"
            )
        if on_cuda:
            device = f"cuda:{ddp.local_rank}"
            torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif ddp.on and "OMP_NUM_THREADS" not in os.environ:  # ranks on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    ddp.init(device, args.dist_timeout)
    # On CUDA: bf16 autocast and channels_last; the CPU path stays the tutorial's float32 math.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format

    try:
        x, y, xt, yt, tutorial_sets = load_data(args)
    except data.DataError as e:
        return fail(str(e))

    torch.manual_seed(args.seed)
    model = Net().to(device, memory_format=memory_format)
    criterion = nn.CrossEntropyLoss()  # with DDP: scaled_cross_entropy, per step
    optimizer = make_optimizer(model, args.lr, args.momentum)
    recipe = {"model": type(model).__name__, **{k: config[k] for k in RECIPE}}
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "running_loss": 0.0, "train_seconds": 0.0}

    resume_path = args.resume
    if resume_path == "auto":
        resume_path = find_latest(ckpt_dir)
    if resume_path:
        try:
            ckpt = load_checkpoint(resume_path, recipe)
        except CheckpointError as e:
            return fail(str(e))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        say(f"resumed from {resume_path} at epoch {state['epoch'] + 1}, step {state['global_step']}")
    elif ddp.main:
        # A fresh start never appends to, or replaces, an earlier run's results unasked.
        earlier = [p for p in (out_dir / "summary.json", out_dir / "metrics.jsonl") if p.exists()]
        if earlier and not args.overwrite:
            return fail(
                f"{out_dir}/ already holds results ({earlier[0].name}): pass another --output-dir, "
                f"--resume auto to continue that run, or --overwrite to replace it"
            )
        for p in earlier:
            p.unlink()

    # Only rank 0 records: the other ranks neither look for a tracker nor fingerprint the packages.
    metrics = Metrics(out_dir, azureml_run(), mlflow_tracking()) if ddp.main else Metrics(None)
    say("config: " + json.dumps({**config, "device": device, "threads": torch.get_num_threads(), "world": ddp.world}))
    info = provenance() if ddp.main else {}
    metrics.tag({**recipe, **info})

    def checkpoint(reason):
        if not ddp.main:
            return
        path = ckpt_dir / f"step-{state['global_step']:08d}.pt"
        save_atomic(
            {
                "format": 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "state": dict(state),
                "recipe": recipe,
            },
            path,
        )
        for old in sorted(ckpt_dir.glob("step-*.pt"))[:-2]:  # keep two: a crash mid-write leaves one good
            old.unlink()
        say(f"checkpoint ({reason}): {path}")

    stop = StopFlag()
    stop.install()
    x_dev, y_dev = (x.to(device), y.to(device)) if args.pipeline == "fast" else (x, y)
    steps_per_epoch = -(-len(x) // args.batch_size)
    progress = ddp.main and (args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty()))
    net = DistributedDataParallel(model) if ddp.on else model  # DDP: rank 0's weights to all, grads averaged
    from tqdm import tqdm

    while state["epoch"] < args.epochs:
        epoch, skip = state["epoch"], state["step_in_epoch"]
        order = epoch_order(len(x), args.seed, epoch)[skip * args.batch_size :]
        if args.pipeline == "fast":
            batches = data.fast_batches(x_dev, y_dev, args.batch_size, order.to(device), ddp.rank, ddp.world)
        else:
            batches = data.tutorial_loader(tutorial_sets[0], args.batch_size, order, args.workers)
        bar = tqdm(
            total=steps_per_epoch,
            initial=skip,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
        )
        line = tqdm.write if progress else say
        t0 = time.perf_counter()
        for k, (inputs, labels) in enumerate(batches):
            inputs = inputs.to(device, memory_format=memory_format, non_blocking=True)
            if ddp.on:
                global_batch = min(args.batch_size, len(order) - k * args.batch_size)
                criterion = partial(scaled_cross_entropy, scale=ddp.world / global_batch)
            loss = train_step(net, optimizer, criterion, inputs, labels.to(device, non_blocking=True), autocast)
            state["running_loss"] += loss.item()  # a CPU-GPU sync point, as in the tutorial
            state["step_in_epoch"] += 1
            state["global_step"] += 1
            bar.update()
            i = state["step_in_epoch"]
            if i % args.log_interval == 0:
                avg = ddp.mean(state["running_loss"]) / args.log_interval
                line(f"epoch={epoch + 1}, batch={i:5d}: loss {avg:.2f}")
                metrics.log("train/loss", avg, state["global_step"], epoch + 1)
                state["running_loss"] = 0.0
            # Ranks agree on when to stop (every 10 steps), so that none waits for a rank that left.
            if (not ddp.on or i % 10 == 0) and ddp.any(stop.signum is not None):
                name = signal.Signals(stop.signum or signal.SIGTERM).name
                state["train_seconds"] += time.perf_counter() - t0
                bar.close()
                checkpoint(name)
                say(f"stopped by {name}; rerun with --resume auto to continue")
                return EXIT_PREEMPTED
            if args.checkpoint_every and state["global_step"] % args.checkpoint_every == 0 and i < steps_per_epoch:
                checkpoint("interval")
        bar.close()
        seconds = time.perf_counter() - t0
        state["train_seconds"] += seconds
        metrics.log("train/images_per_sec", len(order) / seconds, state["global_step"], epoch + 1)
        if ddp.main:  # the others go on; the next step's gradient exchange waits for rank 0
            acc, per_class = evaluate(model, xt.to(device), yt, device, autocast)
            metrics.log("test/accuracy", acc, state["global_step"], epoch + 1)
            for name, value in per_class.items():
                metrics.log(f"test/class_accuracy/{name}", value, state["global_step"], epoch + 1)
            say(f"epoch={epoch + 1}: test accuracy {acc:.1%}")
        state.update(epoch=epoch + 1, step_in_epoch=0, running_loss=0.0)
        checkpoint("epoch end")

    say("Finished Training")
    if not ddp.main:
        return 0
    weights = out_dir / "model.pt"
    save_atomic(model.state_dict(), weights)
    plot(metrics.path, out_dir / "curves.png")
    summary = {
        "config": config,
        "device": device,
        "threads": torch.get_num_threads(),
        "world_size": ddp.world,
        "final": metrics.last,
        "train_seconds": round(state["train_seconds"], 3),
        "images_per_sec": round(args.epochs * len(x) / state["train_seconds"], 1),
        "wall_seconds": round(time.time() - metrics.start, 3),
        "weights_sha256": weights_fingerprint(model),
        **info,
    }
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out_dir / "summary.json")
    metrics.close()
    print(f"outputs: {weights}, {metrics.path}, {out_dir / 'curves.png'}, {out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
