"""Runs the trainer with torchvision expecting the fixture's md5s (in the image, or in a unit test's child).

    python tests/e2e/train_on_fixture.py [train.py flags]

The fixture cannot match the real CIFAR-10 checksums, so the real integrity check expects the fixture's own
(cifar_fixture.expect_fixture, from the files in --data-dir, extracted or as the .tar.gz), then train.main
runs. Nothing here writes into --data-dir.
"""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent / "src"), str(TESTS)]
import train  # noqa: E402
from cifar_fixture import expect_fixture  # noqa: E402
from cli import parse_args  # noqa: E402

expect_fixture(parse_args(sys.argv[1:]).data_dir)
raise SystemExit(train.main(sys.argv[1:]))
