"""torchvision's datasets from a local root: ``cifar10:``, ``cifar100:``, ``mnist:``, ``imagenet:``.

    >>> get_dataset("cifar100:/data/cifar@test")    # expects cifar-100-python/ under /data/cifar
    >>> get_dataset("imagenet:/data/imagenet@val")   # expects ILSVRC2012 archives/devkit there

Nothing is downloaded: point the spec at a root that already holds the files.
Keys are ``SPLIT/INDEX`` for CIFAR and MNIST, relative image paths for ImageNet.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ._loading import first_line
from ._registry import register_dataset


def _load(name, root, build):
    if not Path(root).is_dir():
        raise DatasetError(f"{name} root {root} does not exist or is not a directory")
    try:
        return build()
    except (RuntimeError, FileNotFoundError, OSError) as err:
        line = first_line(err).replace(" You can use download=True to download it", "")
        raise DatasetError(f"{name} data not found under {root} ({line}); put the files there first") from None
    except Exception as err:  # files that are there but damaged fail in any way torchvision's parsers do
        raise DatasetError(f"{name} data under {root} cannot be read, the files may be damaged "
                           f"({type(err).__name__}: {first_line(err)})") from None


def _indexed(name, dataset, split):
    keys = [f"{split}/{i:05d}" for i in range(len(dataset))]
    return dataset, keys, [int(t) for t in dataset.targets], list(dataset.classes)


@register_dataset("cifar10", default_transform="cifar10", splits=("train", "test"), default_split="train",
                  grammar="cifar10:ROOT", description="torchvision's CIFAR-10 files under ROOT")
def cifar10(arg, split, transform):
    from torchvision.datasets import CIFAR10

    dataset = _load("cifar10", arg, lambda: CIFAR10(arg, train=split == "train", transform=transform))
    return _indexed("cifar10", dataset, split)


@register_dataset("cifar100", default_transform="cifar100", splits=("train", "test"), default_split="train",
                  grammar="cifar100:ROOT", description="torchvision's CIFAR-100 files under ROOT")
def cifar100(arg, split, transform):
    from torchvision.datasets import CIFAR100

    dataset = _load("cifar100", arg, lambda: CIFAR100(arg, train=split == "train", transform=transform))
    return _indexed("cifar100", dataset, split)


@register_dataset("mnist", default_transform="mnist", splits=("train", "test"), default_split="train",
                  grammar="mnist:ROOT", description="torchvision's MNIST files under ROOT")
def mnist(arg, split, transform):
    from torchvision.datasets import MNIST

    dataset = _load("mnist", arg, lambda: MNIST(arg, train=split == "train", transform=transform))
    return _indexed("mnist", dataset, split)


@register_dataset("imagenet", default_transform="imagenet", splits=("train", "val"), default_split="train",
                  grammar="imagenet:ROOT", description="torchvision's ImageNet files under ROOT")
def imagenet(arg, split, transform):
    from torchvision.datasets import ImageNet

    dataset = _load("imagenet", arg, lambda: ImageNet(arg, split=split, transform=transform))
    root = Path(dataset.split_folder)
    keys = [Path(path).relative_to(root).as_posix() for path, _ in dataset.samples]
    classes = [names[0] for names in dataset.classes]
    return dataset, keys, dataset.targets, classes
