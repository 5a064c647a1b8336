"""The FID Inception-v3 (the TensorFlow FID graph as ported by pytorch-fid), built without downloads.

Shapes: B batch, 3 x H x W images in [0, 1] -> B x 2048 pool3 features.

The network is torchvision's Inception3 with the four block variants the TF FID graph uses
(average pools that do not count padding, a max pool in the last block) and a 1008-way classifier,
so that the state dict of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` loads strictly.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from eval.stories_io import EvalInputError

INCEPTION_WEIGHTS_HELP = (
    "download it once with\n  wget -O {path} "
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth\n"
    "(pytorch-fid's port of the TF FID Inception; see pretrained/README.md)")


def _branch_pool_avg(module, x):
    # TF's average pool excludes the padded zeros from the mean.
    return module.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))


class FIDInceptionA(tv_inception.InceptionA):
    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, _branch_pool_avg(self, x)], 1)


class FIDInceptionC(tv_inception.InceptionC):
    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, _branch_pool_avg(self, x)], 1)


class FIDInceptionE(tv_inception.InceptionE):
    """Mixed_7b (average pool without padding) or Mixed_7c (max pool), per `use_max_pool`."""

    def __init__(self, in_channels, use_max_pool):
        super().__init__(in_channels)
        self.use_max_pool = use_max_pool

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.use_max_pool:
            branch_pool = self.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        else:
            branch_pool = _branch_pool_avg(self, x)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


def build_fid_inception():
    """The FID Inception-v3 with random weights (load the real ones with load_fid_inception)."""
    net = tv_inception.Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280, use_max_pool=False)
    net.Mixed_7c = FIDInceptionE(2048, use_max_pool=True)
    return net


class InceptionPool3(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> pool3 features (B, 2048), the standard FID feature."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    @torch.no_grad()
    def forward(self, images):
        net = self.net
        # pytorch-fid: bilinear resize to 299, then scale [0, 1] -> [-1, 1] (the range the TF graph
        # expects; StoryGPT-V's script applied ImageNet normalisation and then (x+1)/2 instead).
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                     "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(net, name)(x)
        return torch.flatten(net.avgpool(x), 1)


def load_fid_inception(weights_path):
    """InceptionPool3 with pytorch-fid's weights from a local file; a missing file says how to get it."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise EvalInputError(f"FID needs the Inception weights file {weights_path}, which is missing; "
                             + INCEPTION_WEIGHTS_HELP.format(path=weights_path))
    net = build_fid_inception()
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise EvalInputError(f"{weights_path}: not pytorch-fid's Inception state dict ({err})") from None
    return InceptionPool3(net.eval())
