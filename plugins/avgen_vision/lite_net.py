"""EfficientNet-Lite0 in plain torch, with timm's ``efficientnet_lite0`` layer names and state-dict order.

The quickstart's encoder. timm's own model needs ``import timm``, which imports torchvision and
torch._dynamo: about two seconds before ``avgen generate`` can start on 2 cores. This module builds the
same network (Tan & Le 2019, the "lite" variant: no squeeze-excitation, ReLU6, stem and head not
scaled) from torch alone; tests check that it gives timm's features for the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (block, repeats, kernel, first stride, expansion, output channels): timm's efficientnet_lite0 arch_def
STAGES = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280


def _conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False)


class DepthwiseSeparable(nn.Module):
    """Depthwise k x k conv, BN, ReLU6, pointwise conv, BN (timm's DepthwiseSeparableConv without SE)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = _conv(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    """Pointwise expansion, BN, ReLU6, depthwise k x k, BN, ReLU6, pointwise projection, BN (+ input)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.conv_pw = _conv(cin, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl = _conv(mid, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """Images [B, 3, H, W] -> global-average-pooled features [B, 1280] (or logits with ``num_classes``)."""

    num_features = HEAD

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.conv_stem = _conv(3, STEM, 3, 2)
        self.bn1 = nn.BatchNorm2d(STEM)
        stages, cin = [], STEM
        for kind, repeats, kernel, stride, expansion, cout in STAGES:
            blocks = []
            for i in range(repeats):
                step = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, kernel, step) if kind == "ds"
                              else InvertedResidual(cin, cout, kernel, step, expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(cin, HEAD)
        self.bn2 = nn.BatchNorm2d(HEAD)
        self.classifier = nn.Linear(HEAD, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))

    def fuse_for_inference(self) -> "EfficientNetLite0":
        """Fold every batch norm (its running statistics) into the convolution before it, in place.

        For a frozen encoder: the same function to float rounding, without the batch-norm passes over
        memory (a quarter of EfficientNet-Lite0's CPU time). The state dict then has biases instead of
        batch-norm entries, so load weights first.
        """
        pairs = [(self, "conv_stem", "bn1"), (self, "conv_head", "bn2")]
        for stage in self.blocks:
            for block in stage:
                names = (("conv_dw", "bn1"), ("conv_pw", "bn2")) if isinstance(block, DepthwiseSeparable) else \
                    (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))
                pairs += [(block, conv, bn) for conv, bn in names]
        for owner, conv_name, bn_name in pairs:
            setattr(owner, conv_name, _folded(getattr(owner, conv_name), getattr(owner, bn_name)))
            setattr(owner, bn_name, nn.Identity())
        return self


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by bn (eval mode) as one convolution with a bias, computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=True)
    with torch.no_grad():
        fused.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_((bn.bias.double() - bn.running_mean.double() * scale).to(conv.weight.dtype))
    return fused.to(conv.weight.device)
