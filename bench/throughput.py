"""Training throughput: the tutorial's exact data pipeline against ours, same generated data, one run.

    make bench        # runs this inside the image

The tutorial pipeline is verbatim: torchvision CIFAR10 + ToTensor + Normalize and
DataLoader(batch_size=4, shuffle=True, num_workers=2). Ours decodes once and slices
randperm batches out of a uint8 tensor. Both train the tutorial's Net with SGD(0.001, 0.9).
Prints images/s for each, their ratio, ours at other thread counts and batch sizes, and
the largest loss difference when both see the same order of samples. Then a step at batch 4 on one
thread taken apart: the tutorial's (autograd, torch.optim.SGD), autograd with the trainer's FlatSGD, and
the trainer's direct step (src/step.py) side by side, and how much of the trainer's step the tutorial's
own kernels take (torch.profiler), the rest being SGD's update, dispatch, allocation and Python.
"""

import argparse
import itertools
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parents[1] / "tests")]

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets  # noqa: E402

import data  # noqa: E402
from cifar_fixture import expect_checksums, write_cifar10  # noqa: E402
from device import Device  # noqa: E402
from model import Net  # noqa: E402
from step import autograd_step, make_step  # noqa: E402
from train import make_optimizer  # noqa: E402

CPU = Device("cpu", nullcontext(), torch.contiguous_format)


def tutorial_optimizer(model, lr, momentum):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)  # verbatim from the tutorial


def trainer_step(optimizer_fn=make_optimizer, autograd=False):
    """A fresh Net and optimizer, and the trainer's step for them (step.py), or autograd's."""
    torch.manual_seed(0)
    model = Net()
    optimizer = optimizer_fn(model, lr=0.001, momentum=0.9)
    return autograd_step(model, optimizer, nullcontext()) if autograd else make_step(model, optimizer, CPU, False)


def timed(batches, steps, batch_size, optimizer_fn=make_optimizer, warmup=20, autograd=False):
    """Images/s over `steps` SGD steps after `warmup` (first DataLoader workers, allocator)."""
    step, criterion = trainer_step(optimizer_fn, autograd), nn.functional.cross_entropy
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it), criterion).item()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it), criterion).item()  # .item(), as the tutorial's running loss
    return steps * batch_size / (time.perf_counter() - t0)


def losses(batches, steps, optimizer_fn):
    step, it = trainer_step(optimizer_fn), iter(batches)
    return torch.tensor([step(*next(it), nn.functional.cross_entropy).item() for _ in range(steps)])


# The tutorial's arithmetic, by the aten ops that do it (forward and backward), as torch.profiler names them.
KERNELS = {
    "convolutions (oneDNN)": ("aten::mkldnn_convolution", "aten::convolution_backward"),
    "max pooling": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"),
    "linear layers": ("aten::addmm", "aten::mm", "aten::sum"),
    "ReLU": ("aten::clamp_min", "aten::threshold_backward"),
    "cross-entropy": (
        "aten::_log_softmax",
        "aten::nll_loss_forward",
        "aten::nll_loss_backward",
        "aten::_log_softmax_backward_data",
    ),
}


STEPS = {  # name: (optimizer, autograd's step even where the trainer's direct step applies)
    "autograd, torch.optim.SGD (the tutorial's)": (tutorial_optimizer, True),
    "autograd, FlatSGD": (make_optimizer, True),
    "direct step, FlatSGD (the trainer's)": (make_optimizer, False),
}
TRAINERS = "direct step, FlatSGD (the trainer's)"


def kernel_us(batches):
    """Microseconds per step in each group of the tutorial's kernels (self time, torch.profiler), and
    the profiled step's own microseconds: the same stretch of a busy machine for both."""
    from torch.profiler import ProfilerActivity, profile

    step = trainer_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for inputs, labels in batches:
            step(inputs, labels, nn.functional.cross_entropy).item()
        profiled = (time.perf_counter() - t0) * 1e6 / len(batches)
    self_us = {e.key: e.self_cpu_time_total / len(batches) for e in prof.key_averages()}
    return {group: sum(self_us.get(op, 0.0) for op in ops) for group, ops in KERNELS.items()}, profiled


def step_anatomy(x, y, steps, rounds=3):
    """Microseconds per step at batch 4 on one thread, and the tutorial's kernels' share of the trainer's."""
    torch.set_num_threads(1)
    # Batches made before the clock starts (250, cycled): the step alone is timed, not the slicing.
    batches = list(data.fast_batches(x, y, 4, torch.randperm(len(x))[: 4 * 250]))
    per_step, kernels, shares = {name: [] for name in STEPS}, [], []
    for _ in range(rounds):  # alternating, so that all see the same machine
        for name, (optimizer_fn, autograd) in STEPS.items():
            ips = timed(itertools.cycle(batches), steps, 4, optimizer_fn, autograd=autograd)
            per_step[name].append(4e6 / ips)
        groups, profiled = kernel_us(batches)
        kernels.append(groups)
        shares.append(sum(groups.values()) / profiled)  # a floor: the profiler's own cost counts as "the rest"
    print(f"\na step at batch 4, 1 thread ({machine()}), best of {rounds} alternating rounds of {steps} steps:")
    for name, us in per_step.items():
        print(f"  {name:44s} {min(us):6.0f} us/step (rounds {min(us):.0f}-{max(us):.0f})")
    # Each figure's best round: on a shared machine the least disturbed is the closest to the step's own.
    best = {group: min(k[group] for k in kernels) for group in KERNELS}
    trainers = min(per_step[TRAINERS])
    print(f"  of the trainer's {trainers:.0f} us, in the tutorial's own kernels (self time, best round each):")
    for group, us in best.items():
        print(f"    {group:24s} {us:6.0f} us")
    inside = sum(best.values())
    print(f"    {'together':24s} {inside:6.0f} us ({inside / trainers:.0%} of the best step; within each profiled")
    print(f"    round {min(shares):.0%}-{max(shares):.0%}); the rest is SGD's update, dispatch, allocation, Python")


def machine():
    """Cores and CPU model, to stand next to every figure."""
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {model}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="timed SGD steps at batch 4")
    p.add_argument("--images", type=int, default=10000, help="images per generated training batch file (x5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the step at batch 4")
    p.add_argument("--step-only", action="store_true", help="only the step at batch 4, taken apart")
    args = p.parse_args()
    if args.step_only:
        step_anatomy(*data.fake_cifar10(4 * 250, seed=0), args.steps, args.rounds)
        return
    cores = os.cpu_count()
    root = Path(tempfile.mkdtemp())
    expect_checksums(datasets.CIFAR10, write_cifar10(root, per_batch=args.images))
    print(f"torch {torch.__version__}, {cores} cores, {5 * args.images} generated CIFAR-10 images on disk")
    print(f"allocator for both pipelines: {os.environ.get('LD_PRELOAD') or 'glibc malloc'}")

    torch.set_num_threads(cores)  # the tutorial leaves torch's default
    trainset = datasets.CIFAR10(root, train=True, download=False, transform=data.TUTORIAL_TRANSFORM)
    loader = DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    tutorial = timed(loader, args.steps, 4, tutorial_optimizer)
    print(f"tutorial pipeline, batch 4, {cores} threads, 2 workers: {tutorial:8.0f} images/s")

    x, y = data.to_tensors(datasets.CIFAR10(root, train=True, download=False))
    ours = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        ours[threads] = timed(data.fast_batches(x, y, 4, torch.randperm(len(x))), args.steps, 4)
        print(f"our pipeline,      batch 4, {threads} threads:            {ours[threads]:8.0f} images/s")
    best = max(ours, key=ours.get)
    print(f"ratio ours/tutorial at batch 4: {ours[best] / tutorial:.2f}x (best: {best} thread(s))")

    for batch in (128, 512):
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            steps = max(len(x) // batch - 25, 10)
            ips = timed(data.fast_batches(x, y, batch, torch.randperm(len(x))), steps, batch, warmup=5)
            print(f"our pipeline,  batch {batch:4d}, {threads} threads:            {ips:8.0f} images/s")

    torch.set_num_threads(cores)
    order = torch.randperm(len(x))
    a = losses(DataLoader(trainset, batch_size=4, sampler=order.tolist(), num_workers=2), 200, tutorial_optimizer)
    b = losses(data.fast_batches(x, y, 4, order), 200, make_optimizer)
    print(f"same order, 200 steps: max |loss difference| = {(a - b).abs().max().item():.3g}")
    step_anatomy(x, y, args.steps, args.rounds)


if __name__ == "__main__":
    main()
