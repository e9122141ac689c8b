"""Small torch models shared by the torch-bridge tests."""

import torch


def small_cnn(seed: int = 0) -> torch.nn.Sequential:
    """Conv2d-BatchNorm-ReLU-Flatten-Linear on (N, 3, 6, 6) inputs, with
    non-trivial BatchNorm state and no tied values (train mode)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net
