"""A multi-view teacher's record of its views (docs/FORMAT.md, "Multi-view teachers"): what a replay
needs to rebuild every view, and how many bytes each view's record takes beside its logits.

    >>> record = view_record(config, parse_augment("crop=0.5-1,flip"))
    >>> bytes_per_view(record)          # 5 float16 parameters + an 8-byte hash, if recorded
    18
"""

from __future__ import annotations

import numpy as np

from .view_specs import HASH_NAME, PARAM_DTYPE, PARAM_NAMES, VIEW_SEED_TAG, ViewAugment

HASH_BYTES = 8  # view_hashes is uint64 (BLAKE2b-64)


def view_record(config, augment: ViewAugment) -> dict:
    """The teacher's ``views`` record (docs/FORMAT.md): what a replay needs to rebuild every view."""
    return {
        "count": config.view_count,
        "augment": augment.spec,
        "size": list(augment.size) if augment.size else None,
        "seed": config.seed,
        "draw": f"numpy default_rng([{VIEW_SEED_TAG:#x}, seed, sample index])",
        "params": list(PARAM_NAMES),
        "dtype": PARAM_DTYPE,
        "hashes": HASH_NAME if config.record_view_hashes else None,
    }


def bytes_per_view(record: dict) -> int:
    """Uncompressed bytes of one view's ``view_params`` row (and ``view_hashes`` entry)."""
    return np.dtype(record["dtype"]).itemsize * len(record["params"]) + (HASH_BYTES if record.get("hashes") else 0)
