"""CIFAR-10 as uint8 tensors, decoded once, and the two ways to batch it.

The fast path (default) shuffles with torch.randperm and slices whole batches out of
one tensor, as airbench does: no per-image PIL work, no worker processes. The
tutorial's DataLoader pipeline stays available for comparison; both apply the same
arithmetic (ToTensor, and with --normalize Normalize(0.5, 0.5)) so they see the same numbers.

The data folder is only read: it may be a read-only mount (Azure ML v2's ro_mount) or one
that must not be written back (v1). A folder holding only the .tar.gz is verified and
extracted into a local scratch folder ($TMPDIR); only a download writes into it.

torchvision is imported where the real CIFAR-10 files or PIL images are handled, not at import: it
imports torch._dynamo and sympy, seconds of start-up (docs/perf.md, "Start-up, exit, threads and the
allocator") that a --fake-data run on the fast pipeline never needs.
"""

import os
import shutil
import tempfile
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from errors import TrainerError

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FAKE = "pass --fake-data N to train on synthetic images"


class DataError(TrainerError):
    """A data problem the user can fix; its message says how."""


def cifar10():
    """torchvision's CIFAR10 reader, imported on first use."""
    from torchvision import datasets

    return datasets.CIFAR10


class Transform:
    """The Azure tutorial's per-image transform (ToTensor); the blitz tutorial's adds Normalize.
    torchvision's own Compose, built on the first image: the trainer makes one for every run, and
    only the tutorial pipeline ever calls it."""

    def __init__(self, normalize=False):
        self.normalize, self.compose = normalize, None

    def __call__(self, image):
        if self.compose is None:
            from torchvision import transforms

            steps = [transforms.ToTensor()]
            if self.normalize:
                steps.append(transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
            self.compose = transforms.Compose(steps)
        return self.compose(image)


transform = Transform  # what train.py calls
TUTORIAL_TRANSFORM = Transform()


def files(folder):
    """(path, md5) of every file torchvision's CIFAR10 checks, under folder/cifar-10-batches-py."""
    c = cifar10()
    listed = [*c.train_list, *c.test_list, [c.meta["filename"], c.meta["md5"]]]
    return [(Path(folder) / c.base_folder / name, md5) for name, md5 in listed]


def first_bad_file(folder):
    """The first file missing or failing its md5 check, or None when the extracted set is intact.

    The files are hashed in parallel: hashlib and file reads release the GIL, so the check of
    CIFAR-10's 178 MB uses every core."""
    listed = files(folder)
    with ThreadPoolExecutor(max_workers=min(len(listed), os.cpu_count() or 1)) as pool:
        intact = list(pool.map(lambda entry: utils().check_integrity(*entry), listed))
    return next((path for (path, _), ok in zip(listed, intact, strict=True) if not ok), None)


def utils():
    """torchvision's md5 check and archive extraction, imported on first use."""
    from torchvision.datasets import utils

    return utils


def scratch_folder():
    """Where an archive is extracted: local, writable, and the same for every rank of a node."""
    return Path(tempfile.gettempdir()) / "cifar10-extracted"


def extract(archive, scratch):
    """Verify `archive` (torchvision's md5) and extract it into `scratch`, atomically by rename."""
    if not utils().check_integrity(archive, cifar10().tgz_md5):
        raise DataError(
            f"{archive} failed its md5 check (a partial copy, or another file): "
            f"replace it with CIFAR-10's {cifar10().filename}, or remove it to download, or {FAKE}"
        )
    scratch.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="cifar10-extracting-", dir=scratch.parent))
    try:
        utils().extract_archive(str(archive), str(partial))
        shutil.rmtree(scratch, ignore_errors=True)
        os.replace(partial, scratch)
    except OSError as e:
        raise DataError(
            f"cannot extract {archive} into {scratch.parent}/ ({e.strerror or e}): "
            f"free 200 MB there, or point TMPDIR at a folder that has it"
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"data: extracted {archive} into {scratch}", flush=True)


def prepare(root, download=True):
    """The folder that holds an intact cifar-10-batches-py: `root` itself, or the scratch folder
    holding its archive's extraction, or `root` after a download. Writes into `root` only to download."""
    root, c = Path(root), cifar10()
    bad = first_bad_file(root)
    if bad is None:
        return root
    if (root / c.filename).is_file():
        scratch = scratch_folder()
        if first_bad_file(scratch) is not None:  # another rank of this node may have done it
            extract(root / c.filename, scratch)
        return scratch
    if bad.exists():  # there, but not CIFAR-10's: named whatever the flags (a download may not replace it)
        raise DataError(
            f"CIFAR-10 is corrupt in {root}/{c.base_folder}: {bad} fails its md5 check; replace it with "
            f"CIFAR-10's own (or remove {root}/{c.base_folder}/ to download it again), or {FAKE}"
        )
    if not download:
        raise DataError(
            f"CIFAR-10 is missing in {root}/{c.base_folder}: {bad} is not there; "
            f"put the data set or {c.filename} there, rerun with network access, or {FAKE}"
        )
    try:
        c(root, train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"CIFAR-10 is missing in {root}/{c.base_folder} ({bad} is not there) and could not be downloaded "
            f"({reason}): put {c.base_folder}/ or {c.filename} there, or {FAKE}"
        ) from None
    return root


def checked_cifar10():
    """CheckedCIFAR10: torchvision's CIFAR10 reader, for a folder prepare() has just checked: each open
    would otherwise hash all six data files again (torchvision's _check_integrity), twice per run.
    Defined on first use, as a module attribute all the same, so that DataLoader workers started by
    spawn or forkserver can unpickle the data set."""
    if "CheckedCIFAR10" not in globals():

        class CheckedCIFAR10(cifar10()):
            def _check_integrity(self):
                return True

        CheckedCIFAR10.__qualname__ = "CheckedCIFAR10"
        globals()["CheckedCIFAR10"] = CheckedCIFAR10
    return globals()["CheckedCIFAR10"]


def __getattr__(name):
    """data.CheckedCIFAR10, where pickle looks for it (PEP 562)."""
    if name == "CheckedCIFAR10":
        return checked_cifar10()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_cifar10(folder, train, transform=None):
    """torchvision's own CIFAR10 reader over a folder that prepare() returned (and so checked)."""
    return checked_cifar10()(folder, train=train, download=False, transform=transform)


def to_tensors(dataset):
    """Decode once: uint8 images in NCHW (contiguous, as ToTensor gives) and int64 labels."""
    x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(dataset.targets, dtype=torch.int64)


def fake_cifar10(n, seed):
    """Synthetic images with CIFAR-10's shapes and types, for runs without the data set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


def to_float(x, normalize=False):
    """ToTensor (and Normalize((0.5,)*3, (0.5,)*3)) on a whole uint8 batch: the same float ops."""
    x = x.float().div(255)
    return x.sub(0.5).div(0.5) if normalize else x


def fast_batches(x, y, batch_size, order, rank=0, world=1, normalize=False):
    """Every sample once, in `order` (a permutation), in slices of batch_size.

    With several ranks, each global batch is split into `world` disjoint shares and this rank
    takes its own: together they train on exactly the one-process batches.
    """
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size].tensor_split(world)[rank]
        yield to_float(x[idx], normalize), y[idx]


class TensorImages(Dataset):
    """uint8 NCHW tensors served as PIL images, so the tutorial pipeline runs on any source."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from torchvision.transforms.functional import to_pil_image  # imported once, then a dict lookup

        img = to_pil_image(self.x[i])
        return self.transform(img), int(self.y[i])


def tutorial_loader(dataset, batch_size, order, workers=2):
    """The tutorial's pipeline: per-image PIL -> ToTensor (-> Normalize) in DataLoader workers,
    drawing samples in `order` (the tutorial's shuffle=True draws a fresh randperm the same way)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=workers)


def epoch_order(n, seed, epoch):
    """A fresh permutation each epoch, derived from (seed, epoch) so that a resumed run draws the same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class Tensors:
    """The training and test sets, decoded once (and the tutorial pipeline's Dataset)."""

    x: torch.Tensor  # uint8 NCHW training images (on the device for the fast pipeline)
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_set: object  # the tutorial pipeline's Dataset (PIL images through the transform)


def load(args, ddp, device):
    """The training and test sets as tensors; local rank 0 of each node prepares the files first."""
    per_image = transform(args.normalize)
    if args.fake_data:
        x, y = fake_cifar10(args.fake_data, seed=args.seed)
        x_test, y_test = fake_cifar10(max(args.fake_data // 5, 1), seed=args.seed + 1)
        train_set = TensorImages(x, y, per_image)
    else:
        found = ddp.local_first(lambda: prepare(args.data_dir, download=not args.no_download))
        train_set = open_cifar10(found, train=True, transform=per_image)
        (x, y), (x_test, y_test) = to_tensors(train_set), to_tensors(open_cifar10(found, train=False))
    if args.pipeline == "fast":  # the training set lives on the device; batches are slices of it
        x, y = x.to(device.name), y.to(device.name)
    return Tensors(x, y, x_test, y_test, train_set)


def batches(args, d, order, dev, ddp):
    """This rank's (inputs, labels) on the device, in `order`, through the chosen pipeline."""
    if args.pipeline == "fast":
        order = order.to(dev.name)
        source = fast_batches(d.x, d.y, args.batch_size, order, ddp.rank, ddp.world, args.normalize)
    else:
        source = tutorial_loader(d.train_set, args.batch_size, order, args.workers)
    for inputs, labels in source:
        yield inputs.to(dev.name, memory_format=dev.memory_format, non_blocking=True), labels.to(dev.name)
