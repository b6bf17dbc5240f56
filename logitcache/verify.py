"""``logitcache verify``: the store's own checks (``store.verify_store``) plus, given the dataset,
a rebuild of every view whose hash the dump recorded.

    >>> report = verify_with_dataset("stores/cifar_views.zarr", "cifar100:data@train")
    >>> report.ok, report.problems

The store layer cannot do the second part: rebuilding views needs the data and torch.
"""

from __future__ import annotations

from .errors import LogitCacheError
from .sources import get_dataset
from .store import VerifyReport, open_store, verify_store
from .views.replay import check_view_hashes


def verify_with_dataset(location, dataset: str | None = None, *, split: str | None = None, storage_options=None,
                        workers: int = 0, teachers: list[str] | None = None) -> VerifyReport:
    """Verify a store; with a dataset spec, also its fingerprint match and every hashed view."""
    source = get_dataset(dataset, split=split) if dataset else None
    report = verify_store(location, dataset_keys=source.keys if source else None,
                          dataset_labels=source.labels if source else None, storage_options=storage_options,
                          teachers=teachers)
    if source is None or not report.ok:
        return report
    store = open_store(location, storage_options=storage_options)
    for name in teachers or store.all_teacher_names:
        teacher = store.teacher(name)
        if not teacher.has_view_hashes:
            if teacher.views:
                report.checked.append(f"teacher {name!r}: no view hashes recorded, views not rebuilt")
            continue
        transform = teacher.attrs["settings"]["transform"]
        try:
            views_source = get_dataset(dataset, split=split, transform=transform, for_views=True)
            problems = check_view_hashes(teacher, views_source, workers)
        except LogitCacheError as err:
            report.problems.append(f"teacher {name!r}: {err}")
            continue
        report.problems += [f"teacher {name!r}: {line}" for line in problems]
        if not problems:
            report.checked.append(f"teacher {name!r}: {teacher.num_samples * teacher.views_per_sample} views "
                                  "rebuilt from the dataset, every hash matches")
    return report
