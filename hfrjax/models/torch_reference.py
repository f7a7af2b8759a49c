"""PyTorch re-implementations of the backbones, written from the published layouts.

They serve two purposes: an independent reference for the flax models and the weight
converters (tests), and the PyTorch side of ``launch/benchmark_train.py``. Importing this
module requires torch (``pip install torch==2.13.0`` for the CPU build).
"""

import torch
import torch.nn as tnn


class TorchIBasicBlock(tnn.Module):
    """arcface_torch IBasicBlock, written from the layout description."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = tnn.PReLU(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class TorchIResNet(tnn.Module):
    def __init__(self, layers, width=64, num_features=512, input_size=112, dropout=0.0):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width, eps=1e-5)
        self.prelu = tnn.PReLU(width)
        inplanes = width
        for stage, n in enumerate(layers, start=1):
            planes = width * 2 ** (stage - 1)
            blocks = []
            for i in range(n):
                stride = 2 if i == 0 else 1
                ds = None
                if i == 0 and (stride != 1 or inplanes != planes):
                    ds = tnn.Sequential(
                        tnn.Conv2d(inplanes, planes, 1, stride, bias=False),
                        tnn.BatchNorm2d(planes, eps=1e-5),
                    )
                blocks.append(TorchIBasicBlock(inplanes, planes, stride, ds))
                inplanes = planes
            setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
        self.bn2 = tnn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = tnn.Dropout(dropout)
        side = input_size // 16
        self.fc = tnn.Linear(inplanes * side * side, num_features)
        self.features = tnn.BatchNorm1d(num_features, eps=1e-5)
        tnn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class TorchConvBlock(tnn.Module):
    def __init__(self, cin, cout, k=1, s=1, p=0, groups=1, linear=False):
        super().__init__()
        mods = [tnn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), tnn.BatchNorm2d(cout)]
        if not linear:
            mods.append(tnn.PReLU(cout))
        self.layers = tnn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


class TorchDepthWise(tnn.Module):
    def __init__(self, cin, cout, groups, stride, residual):
        super().__init__()
        self.residual = residual
        self.layers = tnn.Sequential(
            TorchConvBlock(cin, groups),
            TorchConvBlock(groups, groups, 3, stride, 1, groups=groups),
            TorchConvBlock(groups, cout, linear=True),
        )

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class TorchMobileFaceNet(tnn.Module):
    """arcface_torch get_mbf layout (blocks (1, 4, 6, 2), scale 2), for counting."""

    def __init__(self, num_features=512, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        res = lambda c, n, g: [TorchDepthWise(c, c, g, 1, True) for _ in range(n)]  # noqa: E731
        layers = [TorchConvBlock(3, c1, 3, 2, 1)]
        layers += (
            [TorchConvBlock(c1, c1, 3, 1, 1, groups=64)]
            if blocks[0] == 1
            else res(c1, blocks[0], 128)
        )
        layers += [TorchDepthWise(c1, c1, 128, 2, False)] + res(c1, blocks[1], 128)
        layers += [TorchDepthWise(c1, c2, 256, 2, False)] + res(c2, blocks[2], 256)
        layers += [TorchDepthWise(c2, c2, 512, 2, False)] + res(c2, blocks[3], 256)
        self.body = tnn.Sequential(*layers)
        self.conv_sep = TorchConvBlock(c2, 512)
        self.gdc = TorchConvBlock(512, 512, 7, groups=512, linear=True)
        self.fc = tnn.Linear(512, num_features, bias=False)
        self.features = tnn.BatchNorm1d(num_features)

    def forward(self, x):
        x = self.gdc(self.conv_sep(self.body(x)))
        return self.features(self.fc(torch.flatten(x, 1)))


def randomize_torch(model, seed=0):
    """Random weights *and* BN running statistics / affine parameters, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "features.weight":
                continue  # fixed at 1 in arcface_torch
            if name.endswith("prelu.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5)
            elif p.ndim == 1:
                p.copy_(
                    1.0 + 0.1 * torch.randn(p.shape, generator=gen)
                    if "bn" in name
                    else 0.1 * torch.randn(p.shape, generator=gen)
                )
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model
