"""The training step, chosen once per run: autograd's, or the same kernels called directly.

At the tutorial's batch of 4 each kernel is tiny, so autograd around them (graph nodes, saved tensors,
the engine, nn.Module calls, conv2d -> convolution -> _convolution) is a large share of a step: docs/perf.md,
"A step at batch 4" (`make bench ARGS=--loop` measures it). For the default run
(the tutorial's Net, float32 on the CPU, one process, FlatSGD)
DirectStep calls the kernels autograd calls, with the same arguments (torch.profiler lists them, the
formulas are torch's derivatives.yaml), and nothing else: no graph, and the gradients written straight
into one flat buffer that FlatSGD.update reads. Losses, gradients and weights are autograd's and
torch.optim.SGD's bit for bit (tests/unit/test_step.py). Anything else (CUDA, bf16 autocast, DDP,
another model or optimizer, oneDNN switched off) takes autograd's step. The private torch names here, and
the test that guards each through a torch upgrade: docs/upgrading.md.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from model import Net
from sgd import FlatSGD

# The aten operators torch has no Python function for, bound once: calling the C++ operator directly
# saves OpOverload.__call__'s Python frame on each of a step's ten calls.
nll_loss_forward = torch.ops.aten.nll_loss_forward.default._op
nll_loss_backward = torch.ops.aten.nll_loss_backward.default._op
threshold_backward = torch.ops.aten.threshold_backward.default._op  # ReLU's backward: 0 where the output is 0
max_pool2d_backward = torch.ops.aten.max_pool2d_with_indices_backward.default._op
convolution_backward = torch.ops.aten.convolution_backward.default._op
POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # nn.MaxPool2d(2, 2): kernel, stride, padding, dilation, ceil_mode
STRIDE, PADDING, DILATION = [1, 1], [0, 0], [1, 1]  # nn.Conv2d's defaults
MEAN, IGNORE = 1, -100  # CrossEntropyLoss's defaults: reduction="mean" (nll_loss's code for it), ignore_index


def make_step(model, optimizer, device, ddp_on):
    """step(inputs, labels, criterion) -> the loss tensor: DirectStep where it applies, else autograd's step."""
    if DirectStep.applies(model, optimizer, device, ddp_on):
        return DirectStep(model, optimizer)
    return autograd_step(model, optimizer, device.autocast)


def autograd_step(model, optimizer, autocast):
    def step(inputs, labels, criterion):
        """One SGD step, the tutorial's; returns the loss tensor (reading it syncs with the device)."""
        optimizer.zero_grad()
        with autocast:
            loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def onednn_convolutions():
    """Whether torch's convolution runs the Net's on oneDNN (it does for float32 5x5 kernels on the CPU
    at any batch size, unless torch.backends.mkldnn is off): DirectStep calls oneDNN's kernels itself."""
    x, w = torch.zeros(1, 3, 32, 32), torch.zeros(6, 3, 5, 5)
    backend = torch._C._select_conv_backend(x, w, None, STRIDE, PADDING, DILATION, False, [0, 0], 1, None)
    return backend == torch._C._ConvBackend.Mkldnn


class Saved(NamedTuple):
    """What the forward pass keeps for the backward pass: the tensors autograd would save."""

    loss: torch.Tensor
    total_weight: torch.Tensor
    log_probs: torch.Tensor
    a4: torch.Tensor  # fc2's output after ReLU
    a3: torch.Tensor  # fc1's output after ReLU
    p2: torch.Tensor  # the second pooling's output
    flat: torch.Tensor  # the same, flattened
    r2: torch.Tensor  # conv2's output after ReLU
    i2: torch.Tensor  # the second pooling's argmax indices
    p1: torch.Tensor  # the first pooling's output
    r1: torch.Tensor
    i1: torch.Tensor


class DirectStep:
    """The tutorial's step for Net on the CPU in float32: the kernels autograd runs, and nothing else."""

    @staticmethod
    def applies(model, optimizer, device, ddp_on):
        return (
            type(model) is Net
            and isinstance(optimizer, FlatSGD)
            and not ddp_on
            and device.name == "cpu"
            and device.memory_format == torch.contiguous_format
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
            and all(layout is None for layout in optimizer.layouts)  # contiguous weights
            and onednn_convolutions()
        )

    def __init__(self, model, optimizer):
        self.optimizer = optimizer
        # Aliases of the weights that build no graph. They share the weights' storage, which the optimizer
        # updates and a resume's load_state_dict writes into: nothing here can go stale or miss a checkpoint.
        self.weights = [p.detach() for p in model.parameters()]
        self.transposed = [w.t() for w in self.weights[4::2]]  # the linear layers' weight.t(), made once
        # The gradients, flat in FlatSGD's order; each parameter's .grad is its view, as after backward().
        # Every step overwrites all of it, so it carries nothing from one step to the next.
        self.grad = torch.zeros_like(optimizer.flat)
        self.grads = optimizer.views(self.grad)
        for p, g in zip(model.parameters(), self.grads, strict=True):
            p.grad = g
        self.one = torch.ones(())  # d loss / d loss, where backward() starts

    def __call__(self, inputs, labels, criterion):
        assert criterion is F.cross_entropy, "DirectStep computes the tutorial's CrossEntropyLoss only"
        saved = self.forward(inputs, labels)
        self.backward(inputs, labels, saved)
        self.optimizer.update(self.grad)
        return saved.loss

    def forward(self, x, y):
        """Net.forward and F.cross_entropy, in the kernels they reach."""
        w1, b1, w2, b2, _, b3, _, b4, _, b5 = self.weights
        w3t, w4t, w5t = self.transposed
        r1 = torch.clamp_min(torch.mkldnn_convolution(x, w1, b1, PADDING, STRIDE, DILATION, 1), 0)  # F.relu
        p1, i1 = torch._C._nn.max_pool2d_with_indices(r1, *POOL)
        r2 = torch.clamp_min(torch.mkldnn_convolution(p1, w2, b2, PADDING, STRIDE, DILATION, 1), 0)
        p2, i2 = torch._C._nn.max_pool2d_with_indices(r2, *POOL)
        flat = p2.view(len(x), -1)
        a3 = torch.clamp_min(torch.addmm(b3, flat, w3t), 0)  # F.linear is addmm(bias, x, weight.t())
        a4 = torch.clamp_min(torch.addmm(b4, a3, w4t), 0)
        log_probs = torch._log_softmax(torch.addmm(b5, a4, w5t), 1, False)
        loss, total_weight = nll_loss_forward(log_probs, y, None, MEAN, IGNORE)
        return Saved(loss, total_weight, log_probs, a4, a3, p2, flat, r2, i2, p1, r1, i1)

    def backward(self, x, y, s):
        """Autograd's backward kernels in its order; each parameter's gradient lands in self.grad."""
        w1, _, w2, _, w3, _, w4, _, w5, _ = self.weights
        gw1, gb1, gw2, gb2, gw3, gb3, gw4, gb4, gw5, gb5 = self.grads
        g = nll_loss_backward(self.one, s.log_probs, y, None, MEAN, IGNORE, s.total_weight)
        g = torch._log_softmax_backward_data(g, s.log_probs, 1, torch.float32)
        g = linear_backward(g, s.a4, w5, gw5, gb5)
        g = linear_backward(threshold_backward(g, s.a4, 0), s.a3, w4, gw4, gb4)
        g = linear_backward(threshold_backward(g, s.a3, 0), s.flat, w3, gw3, gb3)
        g = max_pool2d_backward(g.view_as(s.p2), s.r2, *POOL, s.i2)
        g = threshold_backward(g, s.r2, 0)
        g = conv_backward(g, s.p1, w2, gw2, gb2, needs_input_grad=True)
        g = max_pool2d_backward(g, s.r1, *POOL, s.i1)
        conv_backward(threshold_backward(g, s.r1, 0), x, w1, gw1, gb1, needs_input_grad=False)


def linear_backward(g, inputs, weight, grad_weight, grad_bias):
    """AddmmBackward0 for F.linear: returns d/d inputs, writes d/d weight and d/d bias into theirs.
    The weight's is mm(g.t(), inputs): autograd's formula for addmm's column-major mat2, weight.t()."""
    torch.mm(g.t(), inputs, out=grad_weight)
    torch.sum(g, [0], True, out=grad_bias.view(1, -1))  # the bias was broadcast over the batch: sum_to
    return torch.mm(g, weight)


MASKS = {True: [True, True, True], False: [False, True, True]}  # d/d (input, weight, bias)


def conv_backward(g, inputs, weight, grad_weight, grad_bias, needs_input_grad):
    """ConvolutionBackward0 (oneDNN's, as the forward); returns d/d inputs (None for the images)."""
    mask = MASKS[needs_input_grad]
    g_in, g_w, g_b = convolution_backward(
        g, inputs, weight, [len(grad_bias)], STRIDE, PADDING, DILATION, False, [0, 0], 1, mask
    )
    grad_weight.copy_(g_w)
    grad_bias.copy_(g_b)
    return g_in
