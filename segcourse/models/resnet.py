"""Dilated ResNet backbone: ResNet-18/34/50/101 returning named feature maps at output stride 32,
16 or 8.

Paper: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; dilation in
place of stride ("atrous convolution") as in Chen et al., "Rethinking Atrous Convolution for
Semantic Image Segmentation" (DeepLabV3), 2017, Sec. 3.1.

Reference code: torchvision ``torchvision/models/resnet.py`` -- ResNet V1.5 (the bottleneck
strides in its 3x3 conv, not in the first 1x1) and ``replace_stride_with_dilation``. Parameter
names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ...)
so its ImageNet weights load with :func:`load_imagenet_weights`; there is no ``fc``.

    backbone = resnet(depth=18, output_stride=16)
    feats = backbone(torch.randn(1, 3, 64, 64))  # layer1 16x16, layer2 8x8, layer3 4x4, layer4 4x4
    backbone.channels            # {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._checks import check_count, check_model_input

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet", "load_imagenet_weights",
           "IMAGENET_URLS"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv whose padding equals its dilation, so stride 1 keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation,
                     bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


# --- Residual blocks ----------------------------------------------------------------------------
#
# When a stage trades its stride for dilation, the conv that *would have strided* still reads the
# finer grid of the previous stage, so it keeps the previous stage's dilation (`previous_dilation`);
# every conv after it reads what would have been the coarser grid, so it is dilated by `dilation`.
# With this rule the dilated network computes exactly the strided one's outputs, plus the ones
# in between (tests/test_resnet.py checks `dilated[..., ::2, ::2] == strided`). torchvision's
# Bottleneck has one 3x3 conv, the strided one; for the BasicBlock (which torchvision refuses to
# dilate) we follow timm's `first_dilation` / `dilation` split, which applies the same rule.


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the shortcut, -> ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 previous_dilation: int | None = None, downsample: nn.Module | None = None):
        super().__init__()
        previous_dilation = dilation if previous_dilation is None else previous_dilation
        self.conv1 = conv3x3(in_channels, planes, stride, previous_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101 block: 1x1 reduce -> 3x3 (carries the stride: "V1.5") -> 1x1 expand x4."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 previous_dilation: int | None = None, downsample: nn.Module | None = None):
        super().__init__()
        previous_dilation = dilation if previous_dilation is None else previous_dilation
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        # The only 3x3 conv sits where the stride is, so it takes the previous dilation (the 1x1
        # convs after it do not care about dilation).
        self.conv2 = conv3x3(planes, planes, stride, previous_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# --- The network --------------------------------------------------------------------------------

# depth -> (block, blocks per stage), Table 1 of the ResNet paper.
ARCHITECTURES = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}

# output stride -> which of layer2/3/4 trade their stride 2 for dilation (torchvision's
# replace_stride_with_dilation). DeepLabV3 trains at 16 and evaluates at 8 (paper, Sec. 4.1).
DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool) and four residual stages; returns their outputs by name."""

    def __init__(self, depth: int = 18, output_stride: int = 32, in_channels: int = 3,
                 width: int = 64):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"depth must be one of {sorted(ARCHITECTURES)}, got {depth!r}")
        if output_stride not in DILATE:
            raise ValueError(f"output_stride must be one of {sorted(DILATE)}, "
                             f"got {output_stride!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        check_count(in_channels, "in_channels")
        block, blocks = ARCHITECTURES[depth]
        self.depth, self.output_stride = depth, output_stride
        self.in_channels, self.width = in_channels, width

        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        self._in, self._dilation = width, 1        # running state while the stages are built
        self.layer1 = self._make_layer(block, width, blocks[0], stride=1, dilate=False)
        dilate = DILATE[output_stride]
        self.layer2 = self._make_layer(block, width * 2, blocks[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, width * 4, blocks[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, width * 8, blocks[3], stride=2, dilate=dilate[2])
        del self._in, self._dilation

        names = ("layer1", "layer2", "layer3", "layer4")
        self.channels = {name: width * 2 ** i * block.expansion for i, name in enumerate(names)}
        self.strides = {"layer1": 4, "layer2": 8, "layer3": min(16, output_stride),
                        "layer4": output_stride}

        # torchvision's initialisation: He-normal (fan_out) convs, BN as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilate: bool):
        previous_dilation = self._dilation
        if dilate:                     # keep the resolution; grow the dilation instead
            self._dilation *= stride
            stride = 1
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self._in != out_channels:
            # Projection shortcut (option B of the paper): 1x1 conv (with the stride) + BN.
            downsample = nn.Sequential(conv1x1(self._in, out_channels, stride),
                                       nn.BatchNorm2d(out_channels))
        layers = [block(self._in, planes, stride, self._dilation, previous_dilation, downsample)]
        layers += [block(out_channels, planes, 1, self._dilation) for _ in range(1, blocks)]
        self._in = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_model_input(self, x, min_size=1)
        # every stride-2 step rounds up, so the last map is ceil(size / output_stride); one
        # image whose last map is 1 x 1 leaves a training BatchNorm a single value per channel,
        # which torch refuses deep inside -- say so here, naming the input
        H, W = x.shape[-2:]
        if x.shape[0] == 1 and max(-(-H // self.output_stride), -(-W // self.output_stride)) == 1 \
                and any(isinstance(m, nn.BatchNorm2d) and m.training for m in self.modules()):
            raise ValueError(f"input: one {H} x {W} image in training mode leaves the ResNet's "
                             f"1/{self.output_stride} map 1 x 1, a single value per BatchNorm "
                             "channel; train on 2 or more images, or larger ones")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))   # stride 4
        feats = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats[name] = x
        return feats


def resnet(depth: int = 18, output_stride: int = 32, in_channels: int = 3,
           width: int = 64) -> ResNet:
    """A ResNet-``depth`` backbone; ``width`` is the stem's channel count (64 in every paper)."""
    return ResNet(depth, output_stride, in_channels, width)


# torchvision's ImageNet-1k weights, "IMAGENET1K_V1" (the ones its DeepLabV3 starts from).
IMAGENET_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def load_imagenet_weights(backbone: ResNet, depth: int | None = None,
                          progress: bool = True) -> ResNet:
    """Load torchvision's ImageNet weights into ``backbone`` (downloads once; needs the network).

    Loading is strict on every key except the classifier ``fc.*``, which the backbone does not
    have. Dilation changes no weight shape, so the weights fit any output stride. The weights
    expect images normalised with the ImageNet mean and std (``segcourse.data.Normalize``).
    """
    depth = backbone.depth if depth is None else depth
    if depth != backbone.depth:
        raise ValueError(f"depth={depth} does not match the backbone's depth {backbone.depth}")
    if depth not in IMAGENET_URLS:
        raise ValueError(f"no ImageNet weights for depth {depth}; have {sorted(IMAGENET_URLS)}")
    if backbone.width != 64 or backbone.in_channels != 3:
        raise ValueError("ImageNet weights need width=64 and in_channels=3, got "
                         f"width={backbone.width}, in_channels={backbone.in_channels}")
    state = torch.hub.load_state_dict_from_url(IMAGENET_URLS[depth], map_location="cpu",
                                               progress=progress, check_hash=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    backbone.load_state_dict(state, strict=True)
    return backbone
