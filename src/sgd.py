"""The tutorial's SGD(lr, momentum) over one flat copy of the weights: the same arithmetic in 4 ops a step.

torch.optim.SGD updates each of the Net's 10 parameter tensors on its own (its foreach path falls back
to a loop on the CPU), inside a profiling wrapper: at batch 4 that is a visible share of a step
(docs/perf.md, "A step at batch 4"). Here the
weights live in one flat tensor (each parameter is a view of its slice), the gradients are gathered
with one cat, and the update is the elementwise float32 ops torch's SGD does, on all 62,006 numbers
at once: buf = grad (first step), then buf = buf * momentum + grad; weights += -lr * buf. Elementwise
ops give the same bits whatever the grouping, so losses and weights equal torch.optim.SGD's bit for
bit (tests/unit/test_sgd.py). A torch.optim.SGD alongside holds the hyperparameters and state in
its own format: state_dict() is its, and checkpoints load into either.
"""

import torch


class StateSGD(torch.optim.SGD):
    """torch.optim.SGD as FlatSGD's holder of hyperparameters and state, minus torch.compile's guard.
    torch.optim wraps these methods in torch._disable_dynamo, which imports torch._dynamo and sympy on
    the first call (seconds of start-up before the first line: docs/perf.md, "Start-up, exit, threads and
    the allocator") only to keep a compiler out of them; nothing here is compiled, so they are the
    methods themselves. A torch upgrade may change that wrapper: docs/upgrading.md."""

    add_param_group = torch.optim.SGD.add_param_group.__wrapped__
    state_dict = torch.optim.SGD.state_dict.__wrapped__
    load_state_dict = torch.optim.SGD.load_state_dict.__wrapped__


def memory_order(t):
    """t's dimensions from outermost to innermost in memory; None when that is their own order."""
    return None if t.is_contiguous() else sorted(range(t.dim()), key=lambda d: -t.stride(d))


def inverse(order):
    return sorted(range(len(order)), key=order.__getitem__)


class FlatSGD:
    """torch.optim.SGD(model.parameters(), lr, momentum), all parameters on one device."""

    def __init__(self, model, lr, momentum):
        self.params = list(model.parameters())
        self.torch_sgd = StateSGD(self.params, lr=lr, momentum=momentum)
        # A parameter stored in another order than its dimensions' (channels_last on CUDA) keeps that
        # layout: its slice of the flat tensor, and its gradient, are read in memory order.
        self.layouts = [memory_order(p) for p in self.params]
        # One storage for all weights; the parameters become views of it. In-place writes
        # (load_state_dict, DDP's broadcast from rank 0) keep them views; model.to() must come before.
        self.flat = self.gather(p.detach() for p in self.params)
        for p, view in zip(self.params, self.views(self.flat), strict=True):
            p.data = view
        self.buffer = None  # the momentum buffer, flat, made by the first step as in torch's SGD

    def gather(self, tensors):
        """One flat tensor of the parameters' `tensors` (weights, gradients, buffers), in layout order."""
        pairs = zip(tensors, self.layouts, strict=True)
        return torch.cat([(t if o is None else t.permute(o)).reshape(-1) for t, o in pairs])

    def views(self, flat):
        """Each parameter's slice of `flat`, in its shape and memory layout."""
        parts = flat.split([p.numel() for p in self.params])
        return [
            part.view_as(p) if o is None else part.view([p.shape[d] for d in o]).permute(inverse(o))
            for p, o, part in zip(self.params, self.layouts, parts, strict=True)
        ]

    def zero_grad(self):
        for p in self.params:
            p.grad = None  # backward then hands each gradient over instead of adding it to zeros

    def step(self):
        self.update(self.gather(p.grad for p in self.params))

    def update(self, grad):
        """The step's arithmetic on a flat gradient (step.py's DirectStep writes its gradients flat)."""
        group = self.torch_sgd.param_groups[0]
        if group["momentum"]:
            if self.buffer is None:
                self.buffer = grad.clone()  # the caller may reuse `grad`; once a run
            else:
                self.buffer.mul_(group["momentum"]).add_(grad)
            grad = self.buffer
        self.flat.add_(grad, alpha=-group["lr"])

    def state_dict(self):
        state = self.torch_sgd.state
        if self.buffer is not None:
            for p, view in zip(self.params, self.views(self.buffer), strict=True):
                state[p]["momentum_buffer"] = view
        return self.torch_sgd.state_dict()

    def load_state_dict(self, state_dict):
        self.torch_sgd.load_state_dict(state_dict)
        buffers = [self.torch_sgd.state[p].get("momentum_buffer") for p in self.params]
        # None when saved before the first step: the next step starts the buffer, as torch's SGD does.
        self.buffer = self.gather(buffers) if all(b is not None for b in buffers) else None
