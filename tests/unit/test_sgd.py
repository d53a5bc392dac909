"""FlatSGD against torch.optim.SGD: the same bits, the same state_dict, either way round."""

import io

import pytest
import torch
from runner import tutorial_steps

from model import Net
from sgd import FlatSGD, StateSGD


def batches(n, seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def train(model, optimizer, data):
    return tutorial_steps(model, optimizer, data)


def fresh(make_optimizer, lr, momentum):
    torch.manual_seed(0)
    model = Net()
    return model, make_optimizer(model, lr, momentum)


def torch_sgd(model, lr, momentum):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)  # the tutorial's


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize(("lr", "momentum"), [(0.001, 0.9), (0.05, 0.0), (0.01, 0.5)])
def test_losses_and_weights_equal_torch_sgd_bit_for_bit(lr, momentum):
    data = batches(300)
    theirs, ours = fresh(torch_sgd, lr, momentum), fresh(FlatSGD, lr, momentum)
    assert train(*ours, data) == train(*theirs, data)
    assert same_weights(ours[0], theirs[0])
    state, expected = ours[1].state_dict()["state"], theirs[1].state_dict()["state"]
    assert state.keys() == expected.keys() and len(state) == (10 if momentum else 0)
    assert all(torch.equal(state[k]["momentum_buffer"], expected[k]["momentum_buffer"]) for k in state)


def round_trip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("first", "then"), [(FlatSGD, torch_sgd), (torch_sgd, FlatSGD), (FlatSGD, FlatSGD)])
@pytest.mark.parametrize("steps_before", [0, 50])
def test_a_checkpoint_from_either_resumes_in_the_other_exactly(first, then, steps_before):
    data = batches(100, seed=1)
    straight = fresh(torch_sgd, 0.001, 0.9)
    expected = train(*straight, data)

    model, optimizer = fresh(first, 0.001, 0.9)
    before = train(model, optimizer, data[:steps_before])
    saved = round_trip({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    model, optimizer = fresh(then, 0.001, 0.9)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    assert before + train(model, optimizer, data[steps_before:]) == expected
    assert same_weights(model, straight[0])


def test_the_models_parameters_are_views_of_the_flat_weights():
    model, optimizer = fresh(FlatSGD, 0.001, 0.9)
    train(model, optimizer, batches(3))
    model.load_state_dict(Net().state_dict())  # in place, as a resume does: still views
    optimizer.flat.zero_()
    assert all(p.abs().sum() == 0 for p in model.parameters())


def test_a_channels_last_model_keeps_its_layout_and_the_same_bits():
    data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches(60, seed=2)]

    def channels_last(make_optimizer):
        def make(model, lr, momentum):
            model.to(memory_format=torch.channels_last)  # as the trainer does on CUDA, before the optimizer
            return make_optimizer(model, lr, momentum)

        return make

    theirs, ours = fresh(channels_last(torch_sgd), 0.001, 0.9), fresh(channels_last(FlatSGD), 0.001, 0.9)
    assert ours[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert train(*ours, data) == train(*theirs, data)
    assert same_weights(ours[0], theirs[0])
    assert ours[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_state_holders_unwrapped_methods_do_what_torch_sgds_do():
    """StateSGD takes add_param_group, state_dict and load_state_dict from under torch.optim's
    torch._disable_dynamo wrapper (their __wrapped__, docs/upgrading.md): still torch.optim.SGD's own."""
    assert all(getattr(StateSGD, m) is not getattr(torch.optim.SGD, m) for m in ("state_dict", "load_state_dict"))
    model, data = Net(), batches(5)
    theirs = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, theirs, data)  # some momentum to carry
    ours = StateSGD(model.parameters(), lr=0.01, momentum=0.9)
    assert ours.param_groups == theirs.param_groups  # add_param_group's defaults filled in alike
    ours.load_state_dict(theirs.state_dict())
    mine, expected = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == expected["param_groups"] and mine["state"].keys() == expected["state"].keys()
    buffers = [(mine["state"][k]["momentum_buffer"], expected["state"][k]["momentum_buffer"]) for k in mine["state"]]
    assert len(buffers) == 10 and all(torch.equal(a, b) for a, b in buffers)
    fresh_sgd = torch.optim.SGD(Net().parameters(), lr=0.5)
    fresh_sgd.load_state_dict(mine)  # and torch's SGD takes what StateSGD saved
    assert fresh_sgd.state_dict()["param_groups"] == expected["param_groups"]
