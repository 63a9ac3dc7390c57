"""A small 2D encoder-decoder: lesion segmentation and a per-view suspicion logit."""

import math

import torch
from torch import nn

SEGMENTATION_CLASSES: tuple[str, ...] = ("mass", "calcification_cluster")
"""The segmentation head's channels, in order."""
POOL_SHARPNESS = 2.0
"""Log-sum-exp pooling of the bottleneck's local logits: between their mean (0) and max (inf)."""


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class MammoNet(nn.Module):
    """A 2D U-Net at half the input resolution, with a suspicion head on the bottleneck.

    Input: ``(n, 1, H, W)`` standardised views (chest wall on the left, cropped to
    the breast; H and W multiples of 16).  A stride-2 stem brings the view to
    half resolution, where a four-level U-Net runs (the CPU budget of training
    pays for it; lesions of 4 mm and more still span several pixels).  Output:
    the suspicion logit ``(n,)`` of each view and the segmentation logits
    ``(n, 2, H, W)`` (mass, calcification cluster), upsampled bilinearly.  The
    suspicion head gives a logit per bottleneck cell (a 1x1 convolution on
    ``enc4``, the Grad-CAM target layer) pooled by log-sum-exp, so one small
    lesion can drive it, and Grad-CAM at ``enc4`` then equals the class
    activation map (Zhou 2016): it shows where the suspicion comes from.
    """

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.LeakyReLU(0.1, inplace=True),
        )
        self.enc1 = _block(w, w)
        self.enc2 = _block(w, 2 * w)
        self.enc3 = _block(2 * w, 4 * w)
        self.enc4 = _block(4 * w, 8 * w)
        self.pool = nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2)
        self.dec3 = _block(8 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.seg = nn.Conv2d(w, len(SEGMENTATION_CLASSES), 1)
        self.cls = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(8 * w, 1, 1))
        self.sharpness = POOL_SHARPNESS

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, seg, _ = self.forward_features(x)
        return logit, seg

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s outputs and the features the OOD score reads, ``(n, 16 * width)``:
        the bottleneck ``enc4`` (what the suspicion head reads) pooled by mean and max."""
        e1 = self.enc1(self.stem(x))
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        local = self.cls(e4).flatten(1) * self.sharpness  # (n, cells): a logit per cell
        pooled = torch.logsumexp(local, dim=1) - math.log(float(local.shape[1]))
        logit = pooled / self.sharpness
        d3 = self.dec3(torch.cat([self.up3(e4), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        seg = nn.functional.interpolate(
            self.seg(d1), size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False
        )
        features = torch.cat([e4.mean(dim=(2, 3)), e4.amax(dim=(2, 3))], dim=1)
        return logit, seg, features


class SuspicionLogit(nn.Module):
    """The suspicion logit alone, ``(n, 1)``: what ``monai.visualize.GradCAM`` explains."""

    def __init__(self, net: MammoNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit: torch.Tensor = self.net(x)[0]
        return logit[:, None]
