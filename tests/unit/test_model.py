import pytest
import torch
from torch import nn

from model import Net


@pytest.mark.parametrize("batch", [1, 4, 7])
def test_logits_shape_for_any_batch_size(batch):
    assert Net()(torch.randn(batch, 3, 32, 32)).shape == (batch, 10)


def test_a_few_sgd_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model, x, y = Net(), torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
