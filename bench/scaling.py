"""Data-parallel scaling on this machine: 1 process against 2 (torchrun, gloo), same global batches.

    make bench-ddp

Runs the trainer itself (fast path, synthetic data) and reads images/s from each run's
summary.json. Efficiency = (2-process images/s) / (2 x 1-process images/s).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "src" / "train.py"


def images_per_sec(workdir, nproc, batch, images, threads):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    out = Path(workdir) / f"p{nproc}-b{batch}"
    flags = [
        "--fake-data",
        str(images),
        "--epochs",
        "1",
        "--batch-size",
        str(batch),
        "--progress",
        "off",
        "--log-interval",
        "100000",
        "--checkpoint-every",
        "0",
        "--threads",
        str(threads),
        "--output-dir",
        str(out),
        "--checkpoint-dir",
        str(out / "ckpt"),
    ]
    subprocess.run([*launcher, str(TRAIN), *flags], check=True, capture_output=True, timeout=1800)
    return json.loads((out / "summary.json").read_text())["images_per_sec"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20000, help="synthetic training images per run")
    args = p.parse_args()
    cores = os.cpu_count()
    print(f"{cores} cores; 1 process uses {cores} threads, each of 2 processes {max(1, cores // 2)}")
    with tempfile.TemporaryDirectory() as work:
        for batch in (4, 32, 128):
            one = images_per_sec(work, 1, batch, args.images, cores)
            two = images_per_sec(work, 2, batch, args.images, max(1, cores // 2))
            print(
                f"global batch {batch:4d}: 1 process {one:8.0f} images/s, 2 processes {two:8.0f} images/s, "
                f"speed-up {two / one:.2f}x, efficiency {two / (2 * one):.0%}"
            )


if __name__ == "__main__":
    main()
