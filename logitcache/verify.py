"""``logitcache verify``: the store's own checks (``store.verify_store``) plus, given the dataset,
a rebuild of every view whose hash the dump recorded, a token corpus tokenised again, or a sample of
a ``dump --generate`` teacher's responses written again.

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
    """Verify a store; with a dataset spec, also its fingerprint match and every hashed view (or, for
    a token store, that tokenising the dataset again gives exactly the stored sequences)."""
    if dataset and open_store(location, storage_options=storage_options).is_tokens:
        report = verify_store(location, storage_options=storage_options, teachers=teachers)
        if report.ok:
            _check_token_data(open_store(location, storage_options=storage_options), dataset, split, report, teachers)
        return report
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


def _check_token_data(store, dataset: str, split: str | None, report: VerifyReport, teachers) -> None:
    """A token store's sequences against the data: tokenised again, or, where a teacher wrote them
    (``dump --generate``), a sample of its responses written again from the prompts."""
    from .dump.generate_verify import check_generated

    names = teachers or store.all_teacher_names
    writers = [n for n in names if isinstance(store.teacher(n, check=False).attrs["settings"].get("generate"), dict)]
    if not writers:
        _check_retokenised(store, dataset, split, report)
    for name in writers:
        problems, checked = check_generated(store, name, dataset, split)
        report.problems += problems
        report.checked += checked


def _check_retokenised(store, dataset: str, split: str | None, report: VerifyReport) -> None:
    """Tokenise ``dataset`` with the store's recorded tokenizer and length; it must give the stored
    sequences exactly (which the store's checks proved are the fingerprint's). Streamed: a block of
    rows at a time against the stored rows, a chunk at a time, so no corpus is held whole."""
    from .sources.tokenizers import get_tokenizer
    from .sources.token_datasets import stream_token_dataset
    from .store._tokens import StoredSequences

    recorded = store.dataset["tokenizer"]
    try:
        tokenizer = get_tokenizer(str(recorded.get("spec")))
        if tokenizer.identity != recorded.get("identity"):
            report.problems.append(f"tokenizer {recorded.get('spec')!r} is not the one the store recorded (its "
                                   "vocabulary or special tokens changed)")
            return
        stream = stream_token_dataset(dataset, tokenizer, store.seq_len, split=split)
        _, differs = StoredSequences(store).differs_from(stream)
    except LogitCacheError as err:
        report.problems.append(str(err))
        return
    if differs:
        report.problems.append(f"tokenising {dataset} with {recorded.get('spec')!r} gives other sequences than the "
                               "store holds (another text, split, packing or tokenizer version)")
    else:
        report.checked.append(f"tokenising {dataset} again gives exactly the stored sequences")
