"""Datasets and models by spec string, shared by every stage.

    >>> from logitcache.sources import get_dataset, get_model
    >>> source = get_dataset("digits@train")
    >>> teacher = get_model("cnn", num_classes=len(source.classes))
    >>> tokenizer = get_tokenizer("bytes")                                  # language models
    >>> tokens = get_token_dataset("text:data/text/shakespeare/*.md@train", tokenizer, seq_len=256)
    >>> lm = get_model("gpt:n_layer=2", num_classes=tokenizer.vocab_size)

Extension points are small registries: ``register_dataset`` / ``register_model`` /
``register_token_dataset`` add a name, ``list_datasets`` / ``list_models`` /
``list_token_datasets`` show what is there.
"""

# The built-in families register their datasets and models on import (one module each).
from . import (  # noqa: E402,F401
    cifar_resnet,
    digits,
    gpt,
    hf_datasets,
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
from .gpt import lm_context_length
from .models import (
    file_sha256,
    get_model,
    list_models,
    load_weights,
    model_transform,
    num_parameters,
    parameters_sha256,
    register_model,
    weights_in_spec,
)
from .tokenizers import Tokenizer, get_tokenizer
from .tokens import TokenSource, get_token_dataset, list_token_datasets, register_token_dataset

__all__ = [
    "DatasetSource",
    "TokenSource",
    "Tokenizer",
    "file_sha256",
    "get_dataset",
    "get_model",
    "get_token_dataset",
    "get_tokenizer",
    "list_datasets",
    "list_models",
    "list_token_datasets",
    "lm_context_length",
    "load_weights",
    "model_transform",
    "num_parameters",
    "parameters_sha256",
    "parse_spec",
    "register_dataset",
    "register_model",
    "register_token_dataset",
    "weights_in_spec",
]
