"""Runs the trainer inside the image with torchvision expecting the fixture's md5s.

The fixture cannot match the real CIFAR-10 checksums, so this makes the real integrity
check expect the fixture's own (computed here from the files), then calls train.main.
"""

import sys
from pathlib import Path

sys.path[:0] = ["/app/src", "/app/tests"]
from torchvision import datasets  # noqa: E402

import train  # noqa: E402
from cifar_fixture import TEST, TRAIN, expect_checksums, md5  # noqa: E402

folder = Path("data/cifar-10-batches-py")
expect_checksums(datasets.CIFAR10, {n: md5(folder / n) for n in [*TRAIN, TEST, "batches.meta"]})
raise SystemExit(train.main(sys.argv[1:]))
