"""Distillation losses: one registry, one file per loss, each declaring its options next to its math.

    >>> from logitcache.losses import kd_loss, dist_loss, dkd_loss, loss_spec, get_loss
    >>> kd_loss(student_logits, teacher_logits, temperature=4.0)            # Hinton KD
    >>> loss_spec("kl=1,dist=0.5").min_batch                                # what train asks of a --loss list
    >>> get_loss("dist", temperature=4.0, beta=2.0)(student_logits, teacher_logits)

- ``declarations.py``: the registry (``LOSSES``), ``Loss`` and ``Option``: what a loss declares.
- ``lists.py``: a ``--loss NAME[=WEIGHT],...`` list, what it answers, the weighted sum it builds.
- ``ce.py``, ``kd.py`` (``kl``: dense, top-k and sampled, images and tokens), ``dist.py``, ``dkd.py``.
- ``token_sums.py``: the next-token CE and KL summed over a batch's target tokens.
- ``chunked.py``: the same sums from a causal LM's hidden states, a chunk of positions through its
  head at a time (imports torch: import it as ``logitcache.losses.chunked``); ``logit_gradients.py``
  writes their gradient w.r.t. a chunk's logits out at T = 1.

The feature losses (AT, RKD, FitNet, ICKD, ReviewKD) live beside their connectors in
``features/losses.py`` and register here under kind ``feature``. Nothing here imports torch at
import time, so the CLI builds its options from the declarations; the tensor code imports it.
A new loss is one file: its math, a ``Loss`` with its ``Option`` s, and ``register_loss``.
"""

from . import ce, dist, dkd, kd  # noqa: F401  (each registers its loss)
from .declarations import (
    LOSSES,
    Loss,
    Option,
    declared_options,
    get_loss,
    list_losses,
    logit_loss,
    loss_names,
    register_loss,
    token_loss,
    token_loss_names,
    unregister_loss,
)
from .dist import DIST, dist_loss
from .dkd import DKD, dkd_loss
from .kd import (
    KLDiv,
    dense_token_kl,
    kd_from_targets,
    kd_loss,
    sampled_kd_loss,
    sampled_token_kl,
    token_kl,
    topk_kd_loss,
    topk_token_kl,
)
from .lists import LossList, check_loss_options, loss_spec, parse_weighted, resolved_loss_options
from .token_sums import (
    IGNORE_INDEX,
    TokenLossSums,
    next_token_targets,
    position_loss_sums,
    target_positions,
    token_loss_sums,
)

__all__ = [
    "DIST", "DKD", "IGNORE_INDEX", "LOSSES", "KLDiv", "Loss", "LossList", "Option", "TokenLossSums",
    "check_loss_options", "declared_options", "dense_token_kl", "dist_loss", "dkd_loss", "get_loss",
    "kd_from_targets", "kd_loss", "list_losses", "logit_loss", "loss_names", "loss_spec",
    "next_token_targets", "parse_weighted", "position_loss_sums",
    "register_loss", "resolved_loss_options", "sampled_kd_loss", "sampled_token_kl", "target_positions",
    "token_kl", "token_loss", "token_loss_names", "token_loss_sums", "topk_kd_loss", "topk_token_kl",
    "unregister_loss",
]
