"""Datasets and models by spec string, shared by every stage.

    >>> from logitcache.sources import get_dataset, get_model
    >>> source = get_dataset("digits@train")
    >>> teacher = get_model("cnn", num_classes=len(source.classes))

Extension points are small registries: ``register_dataset`` / ``register_model`` add a name,
``list_datasets`` / ``list_models`` show what is there.
"""

# The built-in families register their datasets and models on import (one module each).
from . import (  # noqa: E402,F401
    cifar_resnet,
    digits,
    imagefolder,
    small_nets,
    torchvision_datasets,
    wide_resnet,
)
from .datasets import (
    DatasetSource,
    get_dataset,
    list_datasets,
    parse_spec,
    register_dataset,
)
from .models import (
    file_sha256,
    get_model,
    list_models,
    load_weights,
    num_parameters,
    parameters_sha256,
    register_model,
)

__all__ = [
    "DatasetSource",
    "file_sha256",
    "get_dataset",
    "get_model",
    "list_datasets",
    "list_models",
    "load_weights",
    "num_parameters",
    "parameters_sha256",
    "parse_spec",
    "register_dataset",
    "register_model",
]
