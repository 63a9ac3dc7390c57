"""A small 3D network: nodule probability and nodule mask for one isotropic patch."""

import torch
from torch import nn

PATCH = 32
"""Patch edge in voxels; the patch's field of view in mm varies with the candidate."""


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1, inplace=True),
    )


class NoduleNet(nn.Module):
    """A three-level 3D U-Net with a classification head on the bottleneck.

    Input: ``(n, 1, 32, 32, 32)`` normalised HU and ``(n, 1)`` log voxel size (mm),
    which tells the classifier the absolute scale.  Output: nodule logit ``(n,)``
    and mask logits ``(n, 1, 32, 32, 32)``.
    """

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        w = width
        self.enc1 = _block(1, w)
        self.enc2 = _block(w, 2 * w)
        self.enc3 = _block(2 * w, 4 * w)
        self.pool = nn.MaxPool3d(2)
        self.up2 = nn.ConvTranspose3d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose3d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.seg = nn.Conv3d(w, 1, 1)
        self.cls = nn.Sequential(nn.Linear(4 * w * 2 + 1, 32), nn.LeakyReLU(0.1), nn.Linear(32, 1))

    def forward(
        self, x: torch.Tensor, log_voxel_mm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logit, seg, _ = self.forward_features(x, log_voxel_mm)
        return logit, seg

    def forward_features(
        self, x: torch.Tensor, log_voxel_mm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s outputs and the classification head's input ``(n, 8 * width + 1)``
        (the bottleneck's centre mean and maximum, the log voxel size): the OOD features."""
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        centre = e3[:, :, 2:6, 2:6, 2:6].mean(dim=(2, 3, 4))
        pooled = e3.amax(dim=(2, 3, 4))
        features = torch.cat([centre, pooled, log_voxel_mm], dim=1)
        logit = self.cls(features).squeeze(1)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return logit, self.seg(d1), features
