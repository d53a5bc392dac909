"""Runs a training script with torchvision's CIFAR-10 integrity check expecting the files in ./data.

    python on_fixture.py SCRIPT [ARGS...]

The generated data set is in the real on-disk format, but cannot have the real files' md5s; this
makes torchvision's own check expect the md5s of the files present (it still reads and checks them),
then runs SCRIPT as __main__ with its own folder first on sys.path, as `python SCRIPT` would.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from torchvision import datasets  # noqa: E402

from cifar_fixture import TEST, TRAIN, expect_checksums, md5  # noqa: E402

folder = Path("data/cifar-10-batches-py")
expect_checksums(datasets.CIFAR10, {n: md5(folder / n) for n in [*TRAIN, TEST, "batches.meta"]})
script = Path(sys.argv[1]).resolve()
sys.argv = sys.argv[1:]
sys.path[0] = str(script.parent)
runpy.run_path(str(script), run_name="__main__")
