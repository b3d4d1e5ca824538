from __future__ import annotations

import pytest
import torch
from torch import nn


def trained_bn_net() -> tuple[nn.Module, torch.Tensor]:
    """conv-BN-ReLU-conv-BN-ReLU-pool-fc with BN statistics estimated exactly on the data (momentum=None)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x = torch.randn(120, 1, 10, 10)
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        m.train()
        for i in range(0, 120, 40):
            m(x[i:i + 40])
    return m.eval(), x


@pytest.fixture()
def bn_net() -> tuple[nn.Module, torch.Tensor]:
    return trained_bn_net()
