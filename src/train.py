"""Train the Azure ML tutorial's CIFAR-10 Net: same recipe, same `loss` metric and lines by default.

    python train.py                      # the tutorial: 2 epochs, batch 4, SGD(0.001, 0.9), ToTensor inputs
    python train.py --normalize          # the PyTorch blitz tutorial's inputs: Normalize((0.5,)*3, (0.5,)*3)
    python train.py --fake-data 2000     # no data set needed: synthetic images, same path
    python train.py --resume auto        # continue from the latest checkpoint

Runs the same under `docker compose run train` and on Azure ML (ScriptRunConfig / command job).
Exit status: 0 done, 1 a problem the message explains, 2 bad flags, 75 stopped by a signal after a checkpoint.
"""

import gc
import json
import sys
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import cli
import data
import outputs
import runs
from checkpoint import Checkpoints, LoopState
from cli import parse_args
from device import Device, setup_device, threads_for
from distributed import Distributed, StopFlag
from errors import TrainerError
from metrics import Metrics, tracker
from model import Net, evaluate
from provenance import provenance
from sgd import FlatSGD
from step import make_step

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint saved, rerun with --resume
EVAL_BATCH = 1000  # test images per forward pass: accuracy does not depend on it


def make_optimizer(model, lr, momentum):
    """The tutorial's SGD, updating all weights at once: same bits, fewer ops (sgd.py)."""
    return FlatSGD(model, lr=lr, momentum=momentum)


def scaled_cross_entropy(outputs, labels, scale):
    """Sum over the rank's share times world/global batch: DDP's gradient mean is then the
    gradient of the global batch's mean loss, as in one process, whatever the share sizes."""
    return nn.functional.cross_entropy(outputs, labels, reduction="sum") * scale


@dataclass
class Training:
    """Everything the loop needs, made once by setup()."""

    args: object  # the parsed flags (cli.py)
    folders: runs.RunFolders  # the run's name, output and checkpoint folders
    ddp: Distributed
    device: Device
    data: data.Tensors
    model: nn.Module
    net: nn.Module  # the model, wrapped in DistributedDataParallel when there are several ranks
    optimizer: torch.optim.Optimizer
    step: object  # step(inputs, labels, criterion) -> loss: step.py's choice, made once
    checkpoints: Checkpoints
    metrics: Metrics
    state: LoopState
    info: dict
    artifacts: tuple = ()  # the files finish() wrote, for a tracker that keeps them

    def say(self, *text):
        if self.ddp.main:
            print(*text)


def main(argv=None):
    args = parse_args(argv)
    ddp = Distributed()
    try:
        return train(args, ddp)
    except TrainerError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:  # gloo and nccl report a lost peer as RuntimeError (DistBackendError)
        if not ddp.on:
            raise
        print(f"error: {ddp.lost_peer(e)}", file=sys.stderr)
        return 1
    finally:
        ddp.close()


def train(args, ddp):
    device = setup_device(args, ddp)  # the process group first: rank 0 decides the run for every rank
    folders = ddp.from_main(lambda: runs.plan(args))
    if folders.finished:  # `--resume auto` of a finished run: say so, change nothing
        if ddp.main:
            print(folders.finished)
        return 0
    run = setup(args, ddp, device, folders)
    status = "FAILED"
    try:
        code = epochs(run)
        status = "KILLED" if code == EXIT_PREEMPTED else "FINISHED"
        return code
    finally:  # whatever happened, the tracker sends what it holds and closes
        run.metrics.close(artifacts=run.artifacts, status=status)


def epochs(run):
    """The imagenet example's loop: per epoch train, validate, checkpoint; then the outputs."""
    stop = StopFlag()
    stop.install()
    while run.state.epoch < run.args.epochs:
        epoch = run.state.epoch
        if not train_one_epoch(run, epoch, stop):
            checkpoint(run, stop.name)
            run.say(f"stopped by {stop.name}; rerun with --resume auto to continue")
            return EXIT_PREEMPTED
        validate(run, epoch)
        run.state = LoopState(epoch=epoch + 1, global_step=run.state.global_step, train_seconds=run.state.train_seconds)
        checkpoint(run, "epoch end")
    return finish(run)


def announce(run):
    """Where this run's files go, and a warning where they would go with the container."""
    f = run.folders
    run.say(f"run {f.name}: outputs in {f.out_dir}/, checkpoints in {f.ckpt_dir}/")
    for folder in dict.fromkeys((f.out_dir, f.ckpt_dir)):
        lost = outputs.vanishing(folder) if run.ddp.main else None
        if lost:
            print(f"warning: {lost}", file=sys.stderr)


def setup(args, ddp, device, folders):
    """Data, model, optimizer, resumed state and tracking: the run before its first step."""
    train_data = data.load(args, ddp, device)
    folders = ddp.from_main(lambda: runs.create(folders))  # once the data is there: a failed run leaves none
    out_dir, resume, recipe = folders.out_dir, folders.resume, cli.recipe(args)
    checkpoints = Checkpoints(folders.ckpt_dir, recipe, write=ddp.main)

    torch.manual_seed(args.seed)
    model = Net().to(device.name, memory_format=device.memory_format)
    optimizer = make_optimizer(model, args.lr, args.momentum)
    state = checkpoints.restore(resume, model, optimizer) if resume else LoopState()
    # Only rank 0 records: the other ranks neither look for a tracker nor fingerprint the packages.
    metrics = Metrics(out_dir, tracker()) if ddp.main else Metrics(None)
    if resume:
        metrics.resume(state.global_step)
    info = provenance() if ddp.main else {}
    net = DistributedDataParallel(model) if ddp.on else model  # DDP: rank 0's weights to all, grads averaged
    step = make_step(net, optimizer, device, ddp.on)  # the tutorial's kernels called directly, or autograd
    run = Training(
        args, folders, ddp, device, train_data, model, net, optimizer, step, checkpoints, metrics, state, info
    )
    announce(run)
    if resume and state.epoch >= args.epochs:  # killed while writing its outputs: they are all that is left
        run.say(f"resumed from {resume}: training had finished (epoch {state.epoch}); completing the outputs")
    elif resume:
        run.say(f"resumed from {resume} at epoch {state.epoch + 1}, step {state.global_step}")
    config = {**vars(args), "device": device.name, "threads": torch.get_num_threads(), "world": ddp.world}
    if ddp.on:  # what each rank took of this node's cores
        config.update(ranks_on_node=ddp.local_world, threads_per_rank=ddp.gather(torch.get_num_threads()))
    run.say("config: " + json.dumps(config))
    metrics.start(params={**recipe, "epochs": args.epochs}, tags={"run": folders.name, **info})
    return run


def criterion_for(run, order, k):
    """The tutorial's CrossEntropyLoss; with DDP scaled so that gradients are the global batch's."""
    if not run.ddp.on:
        return nn.functional.cross_entropy
    global_batch = min(run.args.batch_size, len(order) - k * run.args.batch_size)
    return partial(scaled_cross_entropy, scale=run.ddp.world / global_batch)


def steps_per_epoch(run):
    return -(-len(run.data.x) // run.args.batch_size)


def progress_bar(run, epoch, skip):
    from tqdm import tqdm

    args = run.args
    on = run.ddp.main and (args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty()))
    desc = f"epoch {epoch + 1}/{args.epochs}"
    return tqdm(total=steps_per_epoch(run), initial=skip, desc=desc, disable=not on, leave=False, file=sys.stderr)


def train_one_epoch(run, epoch, stop):
    """One pass over the training set, from where the state says; False if a signal stopped it."""
    args, state = run.args, run.state
    order = data.epoch_order(len(run.data.x), args.seed, epoch)[state.step_in_epoch * args.batch_size :]
    bar = progress_bar(run, epoch, state.step_in_epoch)
    line = bar.write if not bar.disable else run.say
    t0 = time.perf_counter()
    try:
        for k, (inputs, labels) in enumerate(data.batches(run.args, run.data, order, run.device, run.ddp)):
            loss = run.step(inputs, labels, criterion_for(run, order, k))
            value = loss.item()  # a CPU-GPU sync point, as in the tutorial
            state.running_loss += value
            state.epoch_loss += value
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update()
            i = state.step_in_epoch
            if i % args.log_interval == 0:
                loss = run.ddp.mean(state.running_loss) / args.log_interval
                line(f"epoch={epoch + 1}, batch={i:5d}: loss {loss:.2f}")
                record(run, "loss", loss, epoch)
                state.running_loss = 0.0
            # Ranks agree on when to stop (every 10 steps), so that none waits for a rank that left.
            if (not run.ddp.on or i % 10 == 0) and run.ddp.any(stop.signum is not None):
                return False
            if args.checkpoint_every and state.global_step % args.checkpoint_every == 0 and i < steps_per_epoch(run):
                checkpoint(run, "interval")
    finally:
        bar.close()
        seconds = time.perf_counter() - t0
        state.train_seconds += seconds
    record(run, "train/images_per_sec", len(order) / seconds, epoch)
    # Once an epoch, whatever --log-interval: a short run has a loss too (not the tutorial's `loss`).
    record(run, "train/epoch_loss", run.ddp.mean(state.epoch_loss) / state.step_in_epoch, epoch)
    return True


def record(run, name, value, epoch):
    """A metric at the current step; a failed write (full disk) is one error naming --output-dir."""
    try:
        run.metrics.log(name, value, run.state.global_step, epoch + 1)
    except OSError as e:
        raise outputs.write_failed(run.args.output_dir, e, "--output-dir") from None


def checkpoint(run, reason):
    # Rank 0's checkpoint holds the loss sums of every rank: each rank's are set to their mean over ranks,
    # which leaves every later logged mean as it was.
    state = run.state
    state.running_loss, state.epoch_loss = run.ddp.mean(state.running_loss), run.ddp.mean(state.epoch_loss)
    run.metrics.sync()  # the lines a resume from this checkpoint keeps are on disk before it is
    path = run.checkpoints.save(run.model, run.optimizer, run.state)
    if path:
        run.say(f"checkpoint ({reason}): {path}")


def validate(run, epoch):
    """Test accuracy, on rank 0 only: the others go on; the next step's gradient exchange waits for it."""
    if not run.ddp.main:
        return
    with threads_for(run.args.threads, EVAL_BATCH, run.ddp.local_world):
        acc, per_class = evaluate(
            run.model, run.data.x_test, run.data.y_test, run.device, run.args.normalize, EVAL_BATCH
        )
    record(run, "test/accuracy", acc, epoch)
    for name, value in per_class.items():
        record(run, f"test/class_accuracy/{name}", value, epoch)
    run.say(f"epoch={epoch + 1}: test accuracy {acc:.1%}")


def finish(run):
    """The tutorial's last line, then rank 0 writes weights, plot and summary, and closes tracking."""
    run.say("Finished Training")
    if not run.ddp.main:
        return 0
    out_dir, state = run.folders.out_dir, run.state
    weights, png, summary_json = out_dir / "model.pt", out_dir / "curves.png", out_dir / outputs.SUMMARY
    outputs.save_torch(run.model.state_dict(), weights)
    outputs.plot(run.metrics.path, png)
    seconds = state.train_seconds
    summary = {
        "run": run.folders.name,
        "config": {k: v for k, v in vars(run.args).items() if k != "resume"},  # how it started, not the run
        "device": run.device.name,
        "threads": torch.get_num_threads(),
        "world_size": run.ddp.world,
        "final": run.metrics.last,
        "train_seconds": round(seconds, 3),
        "images_per_sec": round(run.args.epochs * len(run.data.x) / seconds, 1) if seconds else None,
        "wall_seconds": round(time.time() - run.metrics.t0, 3),
        "weights_sha256": outputs.weights_fingerprint(run.model.state_dict()),
        **run.info,
    }
    outputs.write_json(summary, summary_json)
    run.artifacts = (weights, png, summary_json)
    print(f"outputs: {weights}, {run.metrics.path}, {png}, {summary_json}")
    return 0


if __name__ == "__main__":
    code = main()
    # At exit Python's collector walks every object torch and torchvision made (docs/perf.md, "Start-up,
    # exit, threads and the allocator"). Frozen objects are skipped; exit handlers still run.
    gc.freeze()
    raise SystemExit(code)
