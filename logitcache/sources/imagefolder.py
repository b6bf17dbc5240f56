"""``imagefolder:PATH[@SPLIT]``: a folder of class folders of images (torchvision's ImageFolder).

    >>> get_dataset("imagefolder:/data/pets@val", transform="imagenet")   # reads /data/pets/val

Keys are file paths relative to the folder, in ImageFolder's sorted order.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ._registry import register_dataset


@register_dataset("imagefolder", default_transform="imagenet", grammar="imagefolder:DIR",
                  description="class folders of images, DIR/SPLIT with @SPLIT")
def imagefolder(arg, split, transform):
    from torchvision.datasets import ImageFolder

    root = Path(arg) / split if split else Path(arg)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    try:
        dataset = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, PermissionError) as err:
        raise DatasetError(f"image folder {root}: {err}") from None
    keys = [Path(path).relative_to(root).as_posix() for path, _ in dataset.samples]
    return dataset, keys, dataset.targets, dataset.classes
