"""Small networks for the embedded default and tests: an MLP and a compact CNN.

    >>> get_model("mlp:hidden=32", num_classes=10)
    >>> get_model("cnn:width=32", num_classes=10)

Their first layer is lazy (sized on the first forward pass), so one spec fits inputs of any
shape or channel count; logitcache runs one probe batch before training or dumping.
"""

from __future__ import annotations

from ._registry import register_model


@register_model()
def mlp(num_classes: int, hidden: int = 256, depth: int = 1, dropout: float = 0.0):
    """Flatten, ``depth`` hidden ReLU layers of width ``hidden``, then a linear head."""
    from torch import nn

    layers: list = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.LazyLinear(hidden) if i == 0 else nn.Linear(hidden, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes) if depth else nn.LazyLinear(num_classes))
    return nn.Sequential(*layers)


@register_model()
def cnn(num_classes: int, width: int = 32):
    """Two 3x3 conv blocks (width, 2*width) with batch norm, global pooling, linear head."""
    from torch import nn

    return nn.Sequential(
        nn.LazyConv2d(width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
