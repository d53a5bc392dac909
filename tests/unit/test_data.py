import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

import data


def read(folder, train=True):
    return data.to_tensors(data.open_cifar10(folder, train=train))


def test_reads_real_format_through_torchvision(cifar_dir):
    assert data.prepare(cifar_dir, download=False) == cifar_dir
    x, y = read(cifar_dir)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.shape == (200,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert read(cifar_dir, train=False)[0].shape == (40, 3, 32, 32)
    # NCHW tensor equals torchvision's own PIL decoding of the same image
    img, label = datasets.CIFAR10(cifar_dir, train=True)[7]
    assert torch.equal(torch.from_numpy(np.array(img)).permute(2, 0, 1), x[7])
    assert label == y[7]


@pytest.mark.parametrize("cifar_dir", ["archive"], indirect=True)
def test_archive_alone_is_verified_and_extracted_into_scratch_never_into_the_data_folder(cifar_dir, capsys):
    before = sorted(p.name for p in cifar_dir.iterdir())
    found = data.prepare(cifar_dir)  # download allowed, but the (unreachable) URL is never needed
    assert found == data.scratch_folder() and found.parent.name == "scratch"
    assert read(found)[0].shape == (200, 3, 32, 32)
    assert sorted(p.name for p in cifar_dir.iterdir()) == before == ["cifar-10-python.tar.gz"]
    assert data.prepare(cifar_dir) == found  # a second reader (another rank) finds it done
    assert capsys.readouterr().out.count("data: extracted") == 1
    assert [p.name for p in found.parent.iterdir()] == ["cifar10-extracted"]  # no partial extraction left


@pytest.mark.parametrize("cifar_dir", ["archive"], indirect=True)
def test_corrupt_archive_is_named_in_one_line(cifar_dir):
    tgz = cifar_dir / "cifar-10-python.tar.gz"
    tgz.write_bytes(tgz.read_bytes()[:-100])
    with pytest.raises(data.DataError) as err:
        data.prepare(cifar_dir)
    assert str(err.value).startswith(f"{tgz} failed its md5 check") and "\n" not in str(err.value)
    assert not data.scratch_folder().exists()


@pytest.mark.parametrize("download", [False, True])
def test_corrupt_file_is_named_as_corrupt_whatever_the_flags(cifar_dir, download):
    batch = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-100] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.raises(data.DataError) as err:
        data.prepare(cifar_dir, download=download)
    message = str(err.value)
    assert message.startswith(f"CIFAR-10 is corrupt in {cifar_dir}/cifar-10-batches-py: {batch} fails its md5")
    assert "--fake-data" in message and "\n" not in message
    assert batch.read_bytes() == bytes(raw)  # nothing downloaded over it


@pytest.mark.parametrize("damage", ["missing_batch", "empty_dir"])
def test_partial_data_and_no_network_gives_one_clear_message(cifar_dir, damage):
    folder = cifar_dir / "cifar-10-batches-py"
    if damage == "missing_batch":
        (folder / "data_batch_5").unlink()
    else:
        shutil.rmtree(folder)
    with pytest.raises(data.DataError) as err:
        data.prepare(cifar_dir, download=True)
    message = str(err.value)
    missing = folder / ("data_batch_5" if damage == "missing_batch" else "data_batch_1")
    assert f"({missing} is not there) and could not be downloaded" in message
    assert "\n" not in message


@pytest.mark.parametrize("normalize", [False, True])
def test_to_float_is_bitwise_the_tutorial_transform(normalize):
    x, _ = data.fake_cifar10(8, seed=3)
    per_image = data.transform(normalize)
    expected = torch.stack([per_image(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in x])
    assert torch.equal(data.to_float(x, normalize), expected)
    assert (0 <= expected.min() and expected.max() <= 1) != normalize  # ToTensor alone: values in [0, 1]


def test_fast_batches_visit_every_sample_once_in_the_given_order():
    x, y = data.fake_cifar10(10, seed=0)
    order = torch.randperm(10)
    batches = list(data.fast_batches(x, y, 4, order))
    assert [len(b[1]) for b in batches] == [4, 4, 2]  # no sample dropped, as DataLoader's default
    assert torch.equal(torch.cat([b[1] for b in batches]), y[order])
