"""``train()``: a language model on token data (``lm.py``), or a classifier on images (``loop.py``).

    >>> from logitcache.train import TrainConfig, train
    >>> train(TrainConfig(out="runs/kd", student="gpt:n_layer=2", store="lm.zarr"))             # token store
    >>> train(TrainConfig(out="runs/r20", student="resnet20", dataset="cifar100:data@train",
    ...                   store="stores/r56.zarr"))                                               # images
"""

from __future__ import annotations

from ..errors import ConfigError
from . import loop
from .config import TrainConfig
from .lm import train_lm
from .lm_checks import is_token_run


def train(config: TrainConfig, log=print) -> loop.TrainSummary:
    """Train one student (see ``loop.train`` and ``lm.train_lm``); returns the closing summary.

    Raises:
        ConfigError: an image run without --dataset; any option either stage refuses.
    """
    if is_token_run(config):
        return train_lm(config, log)
    if not config.dataset:
        raise ConfigError("--dataset is required: the training set (a token store holds its own sequences: "
                          "give --store)")
    return loop.train(config, log)
