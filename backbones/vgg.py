"""VGG-16 (configuration D of Simonyan & Zisserman), with torchvision parameter names features.N / classifier.N."""
import torch
import torch.nn as nn

from .norm import norm_layer
from .width import scaled_channels

# Output channels per conv, "M" = 2×2 max pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """``features`` (13 conv + 5 pools) → 7×7 adaptive pool → classifier (fc6, fc7, fc8).

    ``width_mult`` scales every conv and fc6/fc7 (1.0 = the paper's net; 0.25: 16..128 channels, fc 1024).
    ``norm`` is accepted for a uniform registry interface; VGG-16 has no normalisation layers, so only "bn"-family
    names are checked for validity.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, norm: str = "bn", width_mult: float = 1.0,
                 **_unused):
        super().__init__()
        norm_layer(norm)  # validates the name
        self.width_mult = width_mult
        layers, in_channels = [], 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                v = scaled_channels(v, width_mult)
                layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        fc = scaled_channels(4096, width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 7 * 7, fc), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )
        self.num_features = fc
        self.out_channels = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # Glorot, as the VGG paper notes trains deep configurations without staged pre-training; with
                # N(0, 0.01) (torchvision's choice) VGG-16 stays at chance on context digits (docs/DETECTION.md).
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
