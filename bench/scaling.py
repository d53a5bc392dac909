"""`make bench-ddp`: data-parallel scaling here, 1 process against 2 (torchrun, gloo), the same global batches.

    make bench-ddp                      make bench-ddp ARGS="--images 4000"

The trainer itself, in the image, on synthetic data; images/s from each run's summary.json. Efficiency is
(2-process images/s) / (2 x 1-process images/s). Past figures: docs/perf.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "src" / "train.py"
FLAGS = "--epochs 1 --progress off --log-interval 100000 --checkpoint-every 0"


def images_per_sec(work, nproc, batch, images, threads):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    out = Path(work) / f"p{nproc}-b{batch}"
    flags = f"{FLAGS} --fake-data {images} --batch-size {batch} --threads {threads}"
    flags += f" --output-dir {out} --checkpoint-dir {out / 'ckpt'}"
    r = subprocess.run([*launcher, str(TRAIN), *flags.split()], capture_output=True, text=True, timeout=1800)
    if r.returncode:
        sys.exit(f"error: {nproc} process(es) at batch {batch} exited with {r.returncode}:\n{r.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())["images_per_sec"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20000, help="synthetic training images per run (default: 20000)")
    args = p.parse_args(argv)
    cores = os.cpu_count()
    print(f"{cores} cores; 1 process uses {cores} threads, each of 2 processes {max(1, cores // 2)}")
    with tempfile.TemporaryDirectory() as work:
        for batch in (4, 32, 128):
            one = images_per_sec(work, 1, batch, args.images, cores)
            two = images_per_sec(work, 2, batch, args.images, max(1, cores // 2))
            print(f"global batch {batch:4d}: 1 process {one:8.0f} images/s, 2 processes {two:8.0f} images/s, ", end="")
            print(f"speed-up {two / one:.2f}x, efficiency {two / (2 * one):.0%}")


if __name__ == "__main__":
    main()
