"""The direct step (step.py) is the tutorial's loop, autograd and torch.optim.SGD, bit for bit."""

import io
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from runner import metric, run_main, tutorial_steps, weights
from torch import nn

import data
import step as step_module
import train
from device import Device
from model import Net
from sgd import FlatSGD
from step import DILATION, IGNORE, MEAN, PADDING, POOL, STRIDE, DirectStep, make_step

CPU = Device("cpu", nullcontext(), torch.contiguous_format)
LR, MOMENTUM = 0.001, 0.9


def epochs_of(n, batch_size, normalize, epochs=2):
    """The trainer's batches of a synthetic data set of n images, epoch after epoch."""
    x, y = data.fake_cifar10(n, seed=0)
    orders = [data.epoch_order(n, 0, e) for e in range(epochs)]
    return [b for order in orders for b in data.fast_batches(x, y, batch_size, order, normalize=normalize)]


def tutorial(batches, momentum=MOMENTUM):
    """The tutorial's loop, verbatim: its losses, its Net and its optimizer."""
    torch.manual_seed(0)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=momentum)
    return tutorial_steps(net, optimizer, batches), net, optimizer


def fresh(momentum=MOMENTUM):
    """The trainer's model, optimizer and step, as setup() and the first train_step make them."""
    torch.manual_seed(0)
    model = Net()
    optimizer = train.make_optimizer(model, LR, momentum)
    step = make_step(model, optimizer, CPU, ddp_on=False)
    assert isinstance(step, DirectStep)
    return model, optimizer, step


def run(step, batches):
    return [step(inputs, labels, nn.functional.cross_entropy).item() for inputs, labels in batches]


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batch_size", [4, 7])  # 50 images: a last batch of 2, then of 1
def test_losses_weights_and_momentum_equal_the_tutorials_loop(normalize, batch_size):
    batches = epochs_of(50, batch_size, normalize)
    assert len(batches[-1][1]) == 50 % batch_size
    losses, net, torch_sgd = tutorial(batches)
    model, optimizer, step = fresh()
    assert run(step, batches) == losses
    assert same_weights(model, net)
    theirs = torch_sgd.state_dict()["state"]
    ours = optimizer.state_dict()["state"]
    assert len(ours) == 10 and all(torch.equal(ours[k]["momentum_buffer"], theirs[k]["momentum_buffer"]) for k in ours)


@pytest.mark.parametrize("momentum", [MOMENTUM, 0.0])
def test_gradients_after_one_step_equal_autograds(momentum):
    batches = epochs_of(4, 4, normalize=False, epochs=1)
    losses, net, _ = tutorial(batches, momentum)
    model, _, step = fresh(momentum)
    assert run(step, batches) == losses
    grads = [(p.grad, q.grad) for p, q in zip(model.parameters(), net.parameters(), strict=True)]
    assert len(grads) == 10 and all(torch.equal(ours, theirs) for ours, theirs in grads)
    assert same_weights(model, net)


def round_trip(model, optimizer):
    """What a checkpoint holds of them, through torch.save and torch.load as checkpoint.py does."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("steps_before", [0, 1, 17])
@pytest.mark.parametrize("step_made", ["before the load", "after the load"])
def test_a_checkpoint_resumes_exactly(steps_before, step_made, normalize):
    batches = epochs_of(50, 4, normalize)
    losses, net, _ = tutorial(batches)
    model, optimizer, step = fresh()
    before = run(step, batches[:steps_before])
    saved = round_trip(model, optimizer)

    model, optimizer, step = fresh()  # a new process: fresh weights, no momentum yet
    run(step, batches[-3:])  # and, made before the load, a step that already ran: nothing of it may remain
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if step_made == "after the load":
        step = make_step(model, optimizer, CPU, ddp_on=False)
    assert before + run(step, batches[steps_before:]) == losses
    assert same_weights(model, net)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # mkldnn.flags() sets that too
def test_autograd_takes_every_step_the_direct_one_does_not_cover():
    model = Net()
    flat = FlatSGD(model, LR, MOMENTUM)
    assert isinstance(make_step(model, flat, CPU, ddp_on=False), DirectStep)
    others = [
        (model, flat, CPU, True),  # DDP: its hooks average the gradients, and its loss is scaled
        (model, torch.optim.SGD(model.parameters(), lr=LR), CPU, False),
        (model, flat, Device("cuda", nullcontext(), torch.channels_last), False),
        (model, flat, Device("cpu", nullcontext(), torch.channels_last), False),
        (Net().double(), FlatSGD(Net().double(), LR, MOMENTUM), CPU, False),
    ]
    for args in others:
        assert not isinstance(make_step(*args), DirectStep)
    with torch.backends.mkldnn.flags(enabled=False):  # convolutions off oneDNN: other kernels
        assert not isinstance(make_step(model, flat, CPU, ddp_on=False), DirectStep)


@pytest.mark.parametrize("normalize", ["", "--normalize"])
def test_the_trainer_takes_the_direct_step_and_gives_the_tutorials_losses_and_weights(normalize, tmp_path, monkeypatch):
    made = []

    def make_step_seen(*args):
        made.append(step_module.make_step(*args))
        return made[-1]

    monkeypatch.setattr(train, "make_step", make_step_seen)
    assert run_main(tmp_path, f"--fake-data 50 --epochs 2 --log-interval 1 --threads 1 {normalize}") == 0
    assert len(made) == 1 and isinstance(made[0], DirectStep)
    losses, net, _ = tutorial(epochs_of(50, 4, bool(normalize)))
    assert metric(tmp_path / "out", "loss") == losses  # one step per line: the loss itself
    saved = weights(tmp_path / "out" / "model.pt")
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


def test_the_trainer_resumed_from_a_mid_epoch_checkpoint_ends_with_the_tutorials_weights(tmp_path):
    flags = "--fake-data 50 --log-interval 1 --threads 1 --checkpoint-every 5"
    assert run_main(tmp_path, f"{flags} --epochs 1") == 0  # checkpoints at steps 5, 10 and 13 (the epoch's end)
    mid_epoch = next((tmp_path / "ckpt").rglob("step-00000010.pt"))
    assert run_main(tmp_path, f"{flags} --epochs 2 --resume {mid_epoch}", out="resumed") == 0
    losses, net, _ = tutorial(epochs_of(50, 4, normalize=False))
    assert metric(tmp_path / "resumed", "loss") == losses[10:]
    saved = weights(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


def autograd_grads(f, inputs, grad_output):
    """What autograd's backward gives each of `inputs` for f(*inputs), given the gradient of the output."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    return torch.autograd.grad(f(*inputs), inputs, grad_output)


def kernel_pairs():
    """Each private or undocumented torch name DirectStep calls (docs/upgrading.md), on a batch of 4 through the
    tutorial's Net, next to the public call or autograd gradient it stands for: {name: (ours, theirs)}."""
    torch.manual_seed(0)
    w, b = Net().conv1.weight.detach(), Net().conv1.bias.detach()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    conv = F.conv2d(x, w, b)
    r = F.relu(conv)
    p, i = F.max_pool2d(r, 2, 2, return_indices=True)
    z = torch.randn(4, 10)
    lp = F.log_softmax(z, 1)
    loss, total_weight = step_module.nll_loss_forward(lp, y, None, MEAN, IGNORE)
    g_conv, g_pool, g_z = torch.randn_like(conv), torch.randn_like(p), torch.randn_like(z)
    mask = [True, True, True]
    return {
        "torch.mkldnn_convolution": (torch.mkldnn_convolution(x, w, b, PADDING, STRIDE, DILATION, 1), conv),
        "torch.clamp_min": (torch.clamp_min(conv, 0), r),
        "torch._C._nn.max_pool2d_with_indices": (torch._C._nn.max_pool2d_with_indices(r, *POOL), (p, i)),
        "torch._log_softmax": (torch._log_softmax(z, 1, False), lp),
        "aten.nll_loss_forward": ((loss,), (F.nll_loss(lp, y),)),
        "aten.nll_loss_backward": (
            step_module.nll_loss_backward(torch.ones(()), lp, y, None, MEAN, IGNORE, total_weight),
            autograd_grads(lambda t: F.nll_loss(t, y), [lp], torch.ones(()))[0],
        ),
        "torch._log_softmax_backward_data": (
            torch._log_softmax_backward_data(g_z, lp, 1, torch.float32),
            autograd_grads(lambda t: F.log_softmax(t, 1), [z], g_z)[0],
        ),
        "aten.threshold_backward": (
            step_module.threshold_backward(g_conv, r, 0),
            autograd_grads(F.relu, [conv], g_conv)[0],
        ),
        "aten.max_pool2d_with_indices_backward": (
            step_module.max_pool2d_backward(g_pool, r, *POOL, i),
            autograd_grads(lambda t: F.max_pool2d(t, 2, 2), [r], g_pool)[0],
        ),
        "aten.convolution_backward": (
            step_module.convolution_backward(g_conv, x, w, [len(b)], STRIDE, PADDING, DILATION, False, [0, 0], 1, mask),
            autograd_grads(F.conv2d, [x, w, b], g_conv),
        ),
    }


@pytest.mark.parametrize("name", list(kernel_pairs()))
def test_each_private_kernel_equals_its_public_counterpart_bit_for_bit(name):
    """One name at a time, so that a torch upgrade that changes one says which (docs/upgrading.md)."""
    ours, theirs = kernel_pairs()[name]
    ours, theirs = (ours, theirs) if isinstance(theirs, tuple) else ((ours,), (theirs,))
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # mkldnn.flags() sets that too
@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4, 512])
def test_onednn_convolutions_says_whether_conv2d_runs_onednns_kernel(enabled, batch_size):
    """onednn_convolutions asks torch._C._select_conv_backend; the profiler shows what F.conv2d really ran."""
    x, w = torch.rand(batch_size, 3, 32, 32), Net().conv1.weight.detach()
    with torch.backends.mkldnn.flags(enabled=enabled):
        said = step_module.onednn_convolutions()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            F.conv2d(x, w)
    ran = {event.name for event in profile.events()}
    assert said == enabled
    assert ("aten::mkldnn_convolution" in ran) == said, sorted(ran)
