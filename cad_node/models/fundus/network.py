"""FundusNet: a small 2D U-Net with lesion channels and an ICDR grading head.

The encoder (five levels, ``width`` .. ``8 * width`` channels) feeds two heads:

- the U-Net decoder: per-pixel logits of the lesion channels (microaneurysm,
  haemorrhage, hard exudate, soft exudate, plus an auxiliary "proliferative"
  channel for neovascularisation and pre-retinal haemorrhage that helps the grade);
- the grading head: average- and max-pooled bottleneck features, joined with
  the mean lesion probability per channel in each image quadrant and its maximum
  (the "how many, where" a grader counts for the 4-2-1 rule), through a small MLP
  to 5 ICDR logits.

``forward`` returns a plain tuple ``(grade_logits, lesion_logits)`` so that the
network exports to TorchScript; :class:`GradeLogits` wraps it for Grad-CAM,
whose target layer is :data:`GRADCAM_LAYER`.
"""

import torch
from torch import nn
from torch.nn import functional

LESION_CHANNELS = 5
GRADES = 5
GRADCAM_LAYER = "net.up1"
"""Grad-CAM++ target layer inside :class:`GradeLogits`: the decoder level at half the
input resolution (128 x 128), whose features make the lesion maps the grading head
pools.  On the encoder levels and the 16 x 16 bottleneck the maps did not locate the
lesions (measured on held-out severe eyes: lesion pixels scored below the rest of the
field of view), since the grade reads the lesions through the decoder."""


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each with batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Bilinear upsampling, concatenation with the skip connection, a ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ConvBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = functional.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        out: torch.Tensor = self.block(torch.cat([x, skip], dim=1))
        return out


class FundusNet(nn.Module):
    """U-Net lesion segmentation + ICDR grading on a (B, 6, 256, 256) fundus input."""

    def __init__(
        self,
        in_channels: int = 6,
        width: int = 16,
        lesion_channels: int = LESION_CHANNELS,
        grades: int = GRADES,
    ) -> None:
        super().__init__()
        w = width
        self.enc0 = ConvBlock(in_channels, w)
        self.enc1 = ConvBlock(w, 2 * w)
        self.enc2 = ConvBlock(2 * w, 4 * w)
        self.enc3 = ConvBlock(4 * w, 8 * w)
        self.bottleneck = ConvBlock(8 * w, 8 * w)
        self.up3 = Up(8 * w, 8 * w, 4 * w)
        self.up2 = Up(4 * w, 4 * w, 2 * w)
        self.up1 = Up(2 * w, 2 * w, w)
        self.up0 = Up(w, w, w)
        self.lesions = nn.Conv2d(w, lesion_channels, 1)
        summary = 16 * w + 5 * lesion_channels
        self.grade = nn.Sequential(
            nn.Linear(summary, 64), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(64, grades)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grade_logits (B, 5), lesion_logits (B, C, H, W))``."""
        grade_logits, lesion_logits, _ = self.forward_features(x)
        return grade_logits, lesion_logits

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s outputs and the features the OOD score reads ``(B, 30 * width)``:
        :func:`encoder_statistics` of the four encoder levels."""
        s0 = self.enc0(x)
        s1 = self.enc1(functional.max_pool2d(s0, 2))
        s2 = self.enc2(functional.max_pool2d(s1, 2))
        s3 = self.enc3(functional.max_pool2d(s2, 2))
        b = self.bottleneck(functional.max_pool2d(s3, 2))
        d = self.up0(self.up1(self.up2(self.up3(b, s3), s2), s1), s0)
        lesion_logits = self.lesions(d)
        summary = self._summary(b, lesion_logits)
        return self.grade(summary), lesion_logits, encoder_statistics((s0, s1, s2, s3))

    def _summary(self, bottleneck: torch.Tensor, lesion_logits: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))], dim=1)
        probs = torch.sigmoid(lesion_logits)
        quadrants = functional.adaptive_avg_pool2d(probs, 2).flatten(1)
        peak = probs.amax(dim=(2, 3))
        lesion_features = torch.log(torch.cat([quadrants * 100.0, peak], dim=1) + 0.01)
        return torch.cat([pooled, lesion_features], dim=1)


def encoder_statistics(levels: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Each channel's spatial mean and standard deviation on every level ``(B, C, H, W)``.

    What the OOD score reads: the grading head's own input (pooled bottleneck + lesion
    summary) moves with the lesion load, so eyes of a rare severe grade scored as unlike the
    training data as a real photograph; the statistics of the encoder's texture and colour
    channels separate the real photograph by about twice as much (docs/model-cards/fundus-dr.md).
    """
    return torch.cat(
        [torch.cat([s.mean(dim=(2, 3)), s.std(dim=(2, 3))], dim=1) for s in levels], dim=1
    )


class GradeLogits(nn.Module):
    """The grading output alone (what Grad-CAM differentiates)."""

    def __init__(self, net: FundusNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grade_logits: torch.Tensor = self.net(x)[0]
        return grade_logits


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
