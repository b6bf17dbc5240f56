"""Datasets, models, tokenizers and token datasets by spec string, shared by every stage.

    >>> from logitcache.sources import get_dataset, get_model
    >>> source = get_dataset("digits@train")
    >>> teacher = get_model("cnn", num_classes=len(source.classes))
    >>> tokenizer = get_tokenizer("bytes")                                  # language models
    >>> tokens = get_token_dataset("text:data/text/shakespeare/*.md@train", tokenizer, seq_len=256)
    >>> lm = get_model("gpt:n_layer=2", num_classes=tokenizer.vocab_size)

Extension points are small registries (``_registry.py``): ``register_dataset``,
``register_model``, ``register_model_scheme``, ``register_token_dataset`` and
``register_tokenizer`` add a name, ``list_datasets``, ``list_models``, ``list_model_schemes``,
``list_token_datasets`` and ``list_tokenizers`` show what is there, and ``spec_help`` says it in words.
"""

# The built-in families register their datasets, models and schemes on import (one module each).
from . import (  # noqa: E402,F401
    checkpoints,
    cifar_resnet,
    digits,
    gpt,
    hf_datasets,
    hf_models,
    imagefolder,
    saved_programs,
    small_nets,
    timm_models,
    torchvision_datasets,
    torchvision_models,
    wide_resnet,
)
from ._source import FACTORY
from .checkpoints import model_from_checkpoint
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
    list_model_schemes,
    list_models,
    load_weights,
    model_transform,
    num_parameters,
    parameters_sha256,
    register_model,
    register_model_scheme,
    weights_in_spec,
)
from .tokenizers import Tokenizer, get_tokenizer, list_tokenizers, register_tokenizer
from .token_datasets import TokenSource, get_token_dataset, list_token_datasets, register_token_dataset

__all__ = [
    "FACTORY",
    "DatasetSource",
    "TokenSource",
    "Tokenizer",
    "file_sha256",
    "get_dataset",
    "get_model",
    "get_token_dataset",
    "get_tokenizer",
    "list_datasets",
    "list_model_schemes",
    "list_models",
    "list_token_datasets",
    "list_tokenizers",
    "lm_context_length",
    "load_weights",
    "model_from_checkpoint",
    "model_transform",
    "num_parameters",
    "parameters_sha256",
    "parse_spec",
    "register_dataset",
    "register_model",
    "register_model_scheme",
    "register_token_dataset",
    "register_tokenizer",
    "weights_in_spec",
]
