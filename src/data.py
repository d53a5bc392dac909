"""CIFAR-10 as uint8 tensors, decoded once, and the two ways to batch it.

The fast path (default) shuffles with torch.randperm and slices whole batches out of
one tensor, as airbench does: no per-image PIL work, no worker processes. The
tutorial's DataLoader pipeline stays available for comparison; both apply the same
arithmetic (ToTensor then Normalize(0.5, 0.5)) so they see the same numbers.
"""

import urllib.error
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BASE_FOLDER = datasets.CIFAR10.base_folder  # "cifar-10-batches-py"
ARCHIVE = datasets.CIFAR10.filename  # "cifar-10-python.tar.gz"
TUTORIAL_TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


class DataError(Exception):
    """A data problem the user can fix; its message says how."""


def open_cifar10(root, train, download=True, transform=None):
    """torchvision's CIFAR10 over `root`, with its integrity check, or a DataError.

    `root` may hold cifar-10-batches-py (extracted) or only the .tar.gz (as a mounted
    Azure dataset may): torchvision verifies the archive's md5 and extracts it offline.
    """
    root = Path(root)
    try:
        return datasets.CIFAR10(root, train=train, download=False, transform=transform)
    except RuntimeError:
        pass  # absent, partial or corrupt: the download below verifies and repairs
    if not download:
        raise DataError(
            f"CIFAR-10 is missing or corrupt in {root}/{BASE_FOLDER}: "
            f"remove it and rerun with network access, or pass --fake-data N"
        )
    try:
        return datasets.CIFAR10(root, train=train, download=True, transform=transform)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"CIFAR-10 is missing or corrupt in {root} and could not be downloaded ({reason}): "
            f"put {BASE_FOLDER}/ or {ARCHIVE} there, or pass --fake-data N to train on synthetic images"
        ) from None


def to_tensors(dataset):
    """Decode once: uint8 images in NCHW (contiguous, as ToTensor gives) and int64 labels."""
    x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(dataset.targets, dtype=torch.int64)


def fake_cifar10(n, seed):
    """Synthetic images with CIFAR-10's shapes and types, for runs without the data set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


def normalize(x):
    """ToTensor + Normalize((0.5,)*3, (0.5,)*3) on a whole uint8 batch, same float ops."""
    return x.float().div(255).sub(0.5).div(0.5)


def fast_batches(x, y, batch_size, order, rank=0, world=1):
    """Every sample once, in `order` (a permutation), in slices of batch_size.

    With several ranks, each global batch is split into `world` disjoint shares and this rank
    takes its own: together they train on exactly the one-process batches.
    """
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size].tensor_split(world)[rank]
        yield normalize(x[idx]), y[idx]


class TensorImages(Dataset):
    """uint8 NCHW tensors served as PIL images, so the tutorial pipeline runs on any source."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = transforms.functional.to_pil_image(self.x[i])
        return self.transform(img), int(self.y[i])


def tutorial_loader(dataset, batch_size, order, workers=2):
    """The tutorial's pipeline: per-image PIL -> ToTensor -> Normalize in DataLoader workers,
    drawing samples in `order` (the tutorial's shuffle=True draws a fresh randperm the same way)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=workers)
