import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

import data
from cifar_fixture import expect_checksums, write_cifar10


def test_reads_real_format_through_torchvision(cifar_dir):
    train = data.open_cifar10(cifar_dir, train=True, download=False)
    x, y = data.to_tensors(train)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.shape == (200,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    xt, _ = data.to_tensors(data.open_cifar10(cifar_dir, train=False, download=False))
    assert xt.shape == (40, 3, 32, 32)
    # NCHW tensor equals torchvision's own PIL decoding of the same image
    img, label = datasets.CIFAR10(cifar_dir, train=True)[7]
    assert torch.equal(torch.from_numpy(np.array(img)).permute(2, 0, 1), x[7])
    assert label == y[7]


def test_archive_alone_is_verified_and_extracted_offline(tmp_path, monkeypatch):
    sums = write_cifar10(tmp_path, per_batch=10, archive=True)
    for attr in ("train_list", "test_list", "meta", "tgz_md5", "url"):
        monkeypatch.setattr(datasets.CIFAR10, attr, getattr(datasets.CIFAR10, attr))
    expect_checksums(datasets.CIFAR10, sums)
    datasets.CIFAR10.url = "http://127.0.0.1:9/unreachable.tar.gz"  # proves nothing is downloaded
    x, _ = data.to_tensors(data.open_cifar10(tmp_path, train=True))
    assert x.shape == (50, 3, 32, 32)


def test_corrupt_file_is_rejected_with_the_fix(cifar_dir):
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-100] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=r"missing or corrupt .*--fake-data"):
        data.open_cifar10(cifar_dir, train=True, download=False)


@pytest.mark.parametrize("damage", ["missing_batch", "empty_dir"])
def test_partial_data_and_no_network_gives_one_clear_message(cifar_dir, monkeypatch, damage):
    folder = cifar_dir / "cifar-10-batches-py"
    if damage == "missing_batch":
        (folder / "data_batch_5").unlink()
    else:
        shutil.rmtree(folder)
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(data.DataError) as err:
        data.open_cifar10(cifar_dir, train=True, download=True)
    message = str(err.value)
    assert "could not be downloaded" in message and "cifar-10-batches-py" in message
    assert "\n" not in message


def test_normalize_is_bitwise_the_tutorial_transform():
    x, _ = data.fake_cifar10(8, seed=3)
    expected = torch.stack([data.TUTORIAL_TRANSFORM(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in x])
    assert torch.equal(data.normalize(x), expected)


def test_fast_batches_visit_every_sample_once_in_the_given_order():
    x, y = data.fake_cifar10(10, seed=0)
    order = torch.randperm(10)
    batches = list(data.fast_batches(x, y, 4, order))
    assert [len(b[1]) for b in batches] == [4, 4, 2]  # no sample dropped, as DataLoader's default
    assert torch.equal(torch.cat([b[1] for b in batches]), y[order])
