"""MLP layers whose bias and ReLU run in one pass around the GEMM (``kernels/linear_relu.py``)."""
from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.mlp import Perceptron

from torchrec_models.kernels import linear_relu as native


class FusedPerceptron(nn.Module):
    """torchrec's ``Perceptron`` with a ReLU: the same ``_linear`` (so the same parameter names and
    checkpoints), computed by the fused kernel where it is usable and by torch otherwise."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self._linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if native.usable(x):
            return native.linear_relu(x, self._linear)
        return torch.relu(self._linear(x))


def _is_relu_perceptron(module: nn.Module) -> bool:
    if type(module) is not Perceptron or module._linear.bias is None:
        return False
    act = module._activation_fn
    return act is torch.relu or type(act) is nn.ReLU


def fuse_relu_layers(model: nn.Module) -> int:
    """Replaces every biased Linear + ReLU ``Perceptron`` under ``model`` in place; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_relu_perceptron(child):
                setattr(parent, name, FusedPerceptron(child._linear))
                count += 1
    return count
