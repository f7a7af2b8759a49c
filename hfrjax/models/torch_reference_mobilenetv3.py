"""PyTorch MobileNetV3-Large written from torchvision's architecture definition.

Used only by the tests, as an independent reference for the flax ``MobileNetV3`` and its
weight converter: same module tree and therefore the same ``state_dict`` keys as
``torchvision.models.mobilenet_v3_large`` (``features.*``, ``classifier.{0,3}``), so a
torchvision checkpoint loads into it unchanged. It deliberately shares no code with the
flax model (its own configuration table and channel rounding). Requires torch.
"""

import torch
import torch.nn as tnn
import torch.nn.functional as F

# (in, kernel, expanded, out, squeeze-excite, hard-swish, stride): Howard et al. 2019, Table 1.
LARGE_SETTING = [
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
]


def _divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _bn(channels):
    return tnn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class ConvNormAct(tnn.Sequential):
    """torchvision ``Conv2dNormActivation``: children 0 conv, 1 BN, 2 activation."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, act=tnn.Hardswish):
        layers = [
            tnn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            _bn(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(tnn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = tnn.Conv2d(channels, squeeze, 1)
        self.fc2 = tnn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * F.hardsigmoid(s)


class InvertedResidual(tnn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, use_hs, stride):
        super().__init__()
        act = tnn.Hardswish if use_hs else tnn.ReLU
        layers = []
        if expanded != cin:
            layers.append(ConvNormAct(cin, expanded, 1, act=act))
        layers.append(ConvNormAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4, 8)))
        layers.append(ConvNormAct(expanded, cout, 1, act=None))
        self.block = tnn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


class TorchMobileNetV3Large(tnn.Module):
    """``torchvision.models.mobilenet_v3_large(num_classes=..., _width_mult=...)``."""

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2):
        super().__init__()

        def adjust(c):
            return _divisible(c * width_mult, 8)

        setting = [
            (adjust(i), k, adjust(e), adjust(o), se, hs, s)
            for i, k, e, o, se, hs, s in LARGE_SETTING
        ]
        layers = [ConvNormAct(3, setting[0][0], 3, 2)]
        layers += [InvertedResidual(*row) for row in setting]
        last_in = setting[-1][3]
        layers.append(ConvNormAct(last_in, 6 * last_in, 1))
        self.features = tnn.Sequential(*layers)
        last_channel = adjust(1280)
        self.classifier = tnn.Sequential(
            tnn.Linear(6 * last_in, last_channel),
            tnn.Hardswish(),
            tnn.Dropout(dropout),
            tnn.Linear(last_channel, num_classes),
        )

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)

    def pre_logits(self, x):
        """The 1280-d pooled feature before the last linear layer (TOPLight's Block7)."""
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier[1](self.classifier[0](x))
