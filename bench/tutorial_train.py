"""Azure ML's tutorial train.py ("Train your first ML model", part 3), behaving verbatim: an input of `make bench`.

Differences that touch neither arithmetic nor speed but in its favour: no `from azureml.core import Run` (outside
Azure ML its offline Run only prints; leaving it out starts the script sooner), torch.manual_seed(0) so that its
weights start where the trainer's (--seed 0) do, and TUTORIAL_EPOCHS (default 2, the tutorial's) for shorter benches.
Its Net is the tutorial's model.py, verbatim (x.view(-1, ...) included), so this file stands alone.
"""

import os

import torch
import torch.nn.functional as F
import torch.optim as optim
import torchvision
from torch import nn


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
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


if __name__ == "__main__":
    torch.manual_seed(0)
    trainset = torchvision.datasets.CIFAR10(
        root="./data", train=True, download=True, transform=torchvision.transforms.ToTensor()
    )
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    net = Net()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    for epoch in range(int(os.environ.get("TUTORIAL_EPOCHS", "2"))):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if i % 2000 == 1999:
                loss = running_loss / 2000
                print(f"epoch={epoch + 1}, batch={i + 1:5}: loss {loss:.2f}")
                running_loss = 0.0
    print("Finished Training")
