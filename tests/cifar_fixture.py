"""Writes a small CIFAR-10 in the real on-disk format: cifar-10-batches-py/ as Python 2's cPickle wrote it.

CIFAR-10's files are protocol-2 pickles from Python 2: every string, the image bytes included, is a
Python 2 `str` (SHORT_BINSTRING/BINSTRING opcodes), and arrays are rebuilt by
numpy.core.multiarray._reconstruct. torchvision reads them with pickle.load(f, encoding="latin1").
A pickle from Python 3 would differ where it matters: its bytes go through _codecs.encode of a UTF-8
string (a third larger on disk and 14 times slower to load, measured at 10,000 images a file).

Used by the unit tests (imported) and by the end-to-end tests (run inside the image):
    python tests/cifar_fixture.py DATA_DIR [IMAGES_PER_BATCH] [--archive]
It prints the md5 of every file as JSON, the values torchvision's integrity check expects.
--archive leaves only cifar-10-python.tar.gz, as a data set uploaded the way the README offers.
The fixture cannot have the real files' md5s, so programs run on it with torchvision expecting its own
(the check itself still runs): expect_fixture(DATA_DIR) in Python, or for a script (`make bench`'s two)
    python tests/cifar_fixture.py --on DATA_DIR SCRIPT [ARGS...]
"""

import hashlib
import json
import pickle
import runpy
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = "test_batch"


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote CIFAR-10: str and bytes as Python 2 str (latin-1
    bytes), numpy's _reconstruct under its Python 2 module name. Loads as the real files do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        if obj is np_reconstruct():
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def np_reconstruct():
    return np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]


def dump_py2(obj, path):
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(obj)


def images(rng, per_batch, learnable):
    """(data, labels): noise with random labels, or (learnable) each class's own pattern plus noise,
    so that a run's loss falls as it would on CIFAR-10 (the README's MLflow screenshot shows that)."""
    labels = rng.integers(0, 10, per_batch)
    if not learnable:
        return rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), labels
    patterns = np.random.default_rng(1234).integers(0, 256, (10, 3072))  # the same in every file
    noisy = patterns[labels] + rng.normal(0, 48, (per_batch, 3072))
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def write_cifar10(root, per_batch=20, seed=0, archive=False, learnable=False):
    """Create root/cifar-10-batches-py (or only the .tar.gz); return {file name: md5}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [*TRAIN, TEST]:
        data, labels = images(rng, per_batch, learnable)
        entry = {  # the real files' keys, in their order
            "data": data,
            "labels": [int(v) for v in labels],
            "batch_label": name,
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        dump_py2(entry, folder / name)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump_py2({"num_cases_per_batch": per_batch, "label_names": classes, "num_vis": 3072}, folder / "batches.meta")
    sums = {name: md5(folder / name) for name in [*TRAIN, TEST, "batches.meta"]}
    if archive:
        tgz = Path(root) / "cifar-10-python.tar.gz"
        with tarfile.open(tgz, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
        sums["cifar-10-python.tar.gz"] = md5(tgz)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return sums


def fixture_sums(root):
    """{file name: md5} of the fixture in root, read from cifar-10-batches-py/ or else from the .tar.gz
    (without extracting it: the data folder may be read-only)."""
    root = Path(root)
    folder, tgz = root / "cifar-10-batches-py", root / "cifar-10-python.tar.gz"
    if not tgz.is_file():
        return {p.name: md5(p) for p in folder.iterdir()}
    with tarfile.open(tgz) as tar:
        sums = {Path(m.name).name: hashlib.md5(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
    return {**sums, "cifar-10-python.tar.gz": md5(tgz)}


def expect_checksums(cifar10_cls, sums):
    """Make torchvision's CIFAR10 expect the fixture's md5s (its real check then runs on them)."""
    cifar10_cls.train_list = [[name, sums[name]] for name in TRAIN]
    cifar10_cls.test_list = [[TEST, sums[TEST]]]
    cifar10_cls.meta = {**cifar10_cls.meta, "md5": sums["batches.meta"]}
    if "cifar-10-python.tar.gz" in sums:
        cifar10_cls.tgz_md5 = sums["cifar-10-python.tar.gz"]


def expect_fixture(root):
    """torchvision's CIFAR10 expects the md5s of the fixture in root (extracted, or as the .tar.gz)."""
    from torchvision import datasets  # here, not on top: writing a fixture needs numpy alone

    expect_checksums(datasets.CIFAR10, fixture_sums(root))


def run_on_fixture(root, argv):
    """Run argv[0] as `python SCRIPT ARGS...` would (its own folder first on sys.path), on the fixture in root."""
    expect_fixture(root)
    sys.argv, sys.path[0] = list(argv), str(Path(argv[0]).resolve().parent)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--on"]:
        raise SystemExit(run_on_fixture(sys.argv[2], sys.argv[3:]))
    args = [a for a in sys.argv[1:] if a not in ("--archive", "--learnable")]
    n = int(args[1]) if len(args) > 1 else 20
    print(json.dumps(write_cifar10(args[0], n, archive="--archive" in sys.argv, learnable="--learnable" in sys.argv)))
