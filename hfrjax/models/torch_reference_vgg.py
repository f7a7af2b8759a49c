"""PyTorch definitions of VGG16 up to block3-conv3 and of CSAN's attention head, written
from torchvision's published VGG16 layout and CSAN §III-C (Eq. 1-3) independently of the
flax code. Test reference for `hfrjax.models.vgg` and `hfrjax.models.cross_spectral_attention`
and their weight converters. Importing this module requires torch.
"""

import math

import torch
import torch.nn as tnn


class TorchVGG16Conv3(tnn.Module):
    """``features`` as in torchvision's ``vgg16()``, cut after conv3_3's ReLU (index 15) or,
    with ``final_pool``, after block 3's max-pool (index 16). State_dict keys
    ``features.{0,2,5,7,10,12,14}.{weight,bias}`` as torchvision's."""

    def __init__(self, widths=(64, 128, 256), final_pool=False, in_channels=3):
        super().__init__()
        layers, cin = [], in_channels
        for block, (width, n) in enumerate(zip(widths, (2, 2, 3))):
            for _ in range(n):
                layers += [tnn.Conv2d(cin, width, kernel_size=3, padding=1), tnn.ReLU()]
                cin = width
            if block < 2 or final_pool:
                layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
        self.features = tnn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


class TorchCSAN(tnn.Module):
    """Truncated VGG16 + three 1x1-conv tanh subspaces + log-softmax cross attention.

    ``forward(x)`` -> (embedding [B, P*dim], attention [B, P, P], F_out [B, P, dim]) with
    positions P in row-major (h, w) order.
    """

    def __init__(self, dim=128, widths=(64, 128, 256), final_pool=True, in_channels=3):
        super().__init__()
        self.backbone = TorchVGG16Conv3(widths, final_pool, in_channels)
        self.subspace_rgb = tnn.Conv2d(widths[-1], dim, kernel_size=1)
        self.subspace_ir = tnn.Conv2d(widths[-1], dim, kernel_size=1)
        self.subspace_common = tnn.Conv2d(widths[-1], dim, kernel_size=1)
        self.dim = dim

    def forward(self, x):
        feat = self.backbone(x)

        def project(conv):  # [B, C, H, W] -> [B, H*W, dim]
            return torch.tanh(conv(feat)).flatten(2).transpose(1, 2)

        f_rgb = project(self.subspace_rgb)
        f_ir = project(self.subspace_ir)
        f_common = project(self.subspace_common)
        scores = torch.bmm(f_rgb, f_ir.transpose(1, 2)) / math.sqrt(self.dim)
        attention = torch.log_softmax(scores, dim=2)
        out = torch.bmm(attention, f_common)
        return out.flatten(1), attention, out
