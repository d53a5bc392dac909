"""Batch 512 against the machine's float32 matmul rate, and the test-set evaluation time (inside the image).

    python bench/kernels.py --data data      # make bench runs it after the whole-command rounds

The trainer itself runs one epoch at --batch-size 512 on the generated data set, on one thread and on all cores;
its images/s times the Net's training FLOPs per image, over the best 2048x2048 float32 matmul rate
measured just before and after with the same thread count, is the share printed. FLOPs count the
convolutions and linear layers (forward, and backward's weight and input gradients, none for the
input image); pooling, ReLU and the optimizer are left out, so the share is a lower bound.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

sys.path[:0] = ["/app/src", str(Path(__file__).resolve().parents[1] / "tests")]

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets  # noqa: E402

from cifar_fixture import TEST, TRAIN, expect_checksums, md5  # noqa: E402


def matmul_gflops(n=2048, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def train_flops_per_image(model):
    """Forward FLOPs of every conv and linear layer, times 3 (forward, grad of weights, grad of inputs),
    less the first layer's input gradient, which nothing needs."""
    flops = []

    def hook(module, inputs, output):
        w = module.weight
        per_out = 2 * w[0].numel()  # multiply-adds per output element
        flops.append(per_out * output[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return 3 * sum(flops) - flops[0]


# Cumulative: each line's interpreter does everything above it too.
STARTUP = [
    ("python itself", "pass"),
    ("+ import torch", "import torch"),
    ("+ torchvision.datasets (pulls in torch._dynamo)", "import torchvision.datasets"),
    ("+ azureml-core's Run.get_context()", "from azureml.core import Run; Run.get_context()"),
    ("+ matplotlib.pyplot", "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"),
]


def startup_costs(reps=3):
    """Each line: a fresh interpreter doing one more of the trainer's start-up steps (best of reps)."""
    previous = 0.0
    for i, (label, _) in enumerate(STARTUP):
        code = "; ".join(c for _, c in STARTUP[: i + 1])
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            best = min(best, time.perf_counter() - t0)
        print(f"  {label:52s} {best:5.2f} s  (+{best - previous:.2f})")
        previous = best
    from provenance import packages_fingerprint

    for label, fn in (("dist-info names (now)", packages_fingerprint), ("every METADATA file (before)", by_metadata)):
        t0 = time.perf_counter()
        fn()
        print(f"  package fingerprint from {label:28s} {1e3 * (time.perf_counter() - t0):6.1f} ms")


def by_metadata():
    from importlib import metadata

    return sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data", help="folder holding cifar-10-batches-py (generated)")
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args()
    folder = Path(args.data) / "cifar-10-batches-py"
    expect_checksums(datasets.CIFAR10, {n: md5(folder / n) for n in [*TRAIN, TEST, "batches.meta"]})
    import train
    from model import Net

    flops = train_flops_per_image(Net())
    cores = len(os.sched_getaffinity(0))
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        before = matmul_gflops()
        with tempfile.TemporaryDirectory() as work:
            flags = f"--batch-size {args.batch_size} --epochs 1 --data-dir {args.data} --progress off"
            flags += f" --threads {threads} --output-dir {work}/out --checkpoint-dir {work}/ckpt --checkpoint-every 0"
            with open(os.devnull, "w") as quiet, redirect_stdout(quiet):  # its loss lines are not the point here
                rc = train.main(flags.split())
            if rc:
                sys.exit(f"error: the trainer at batch {args.batch_size} exited with {rc}")
            ips = json.loads(Path(work, "out", "summary.json").read_text())["images_per_sec"]
        rate = max(before, matmul_gflops())
        print(
            f"{threads} thread(s): float32 matmul 2048x2048 {rate:6.1f} GFLOP/s (best of before/after); "
            f"trainer at batch {args.batch_size} {ips:7.0f} images/s x {flops / 1e6:.2f} MFLOP = "
            f"{ips * flops / 1e9:5.1f} GFLOP/s, {ips * flops / 1e9 / rate:.0%} of the matmul rate"
        )

    print("start-up, fresh interpreters in this image:")
    startup_costs()

    test = datasets.CIFAR10(args.data, train=False, download=False)
    xt = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(test.targets)
    model, cpu = Net(), train.Device("cpu", nullcontext(), torch.contiguous_format)
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            train.evaluate(model, xt, yt, cpu, normalize=False)
            best = min(best, time.perf_counter() - t0)
        print(f"test-set evaluation ({len(xt)} images, train.evaluate), {threads} thread(s): {best:.2f} s (best of 3)")


if __name__ == "__main__":
    main()
