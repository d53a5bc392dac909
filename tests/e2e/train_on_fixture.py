"""Runs the trainer with torchvision expecting the fixture's md5s (in the image, or in a unit test's child).

    python tests/e2e/train_on_fixture.py [train.py flags]

The fixture cannot match the real CIFAR-10 checksums, so this makes the real integrity
check expect the fixture's own (computed from the files in --data-dir, extracted or as the
.tar.gz), then calls train.main. Nothing here writes into --data-dir.
"""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent / "src"), str(TESTS)]
from torchvision import datasets  # noqa: E402

import train  # noqa: E402
from cifar_fixture import expect_checksums, fixture_sums  # noqa: E402

args = train.parse_args(sys.argv[1:])
expect_checksums(datasets.CIFAR10, fixture_sums(args.data_dir))
raise SystemExit(train.main(sys.argv[1:]))
