"""The PyTorch CIFAR-10 tutorial's network (2 conv + 3 linear layers), and its accuracy on the test set."""

import torch
import torch.nn.functional as F
from torch import nn

from data import CLASSES, to_float


# The tutorial's Net, but for flatten. bench/tutorial_train.py keeps its verbatim copy on purpose: the
# script `make bench` races stands alone, as the tutorial's does.
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # not x.view(-1, 400): keeps the batch dimension honest
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@torch.no_grad()
def evaluate(model, x, y, device, normalize, batch_size):
    """Accuracy overall and per class, for any batch size (no per-class loop over a batch of 4)."""
    model.eval()
    correct = torch.zeros(10, dtype=torch.int64)
    total = torch.bincount(y, minlength=10)
    for i in range(0, len(x), batch_size):
        xb, yb = to_float(x[i : i + batch_size], normalize).to(device.name), y[i : i + batch_size]
        with device.autocast:
            pred = model(xb).argmax(1).cpu()
        correct += torch.bincount(yb[pred == yb], minlength=10)
    model.train()
    per_class = {c: (correct[i] / total[i]).item() if total[i] else float("nan") for i, c in enumerate(CLASSES)}
    return (correct.sum() / total.sum()).item(), per_class
