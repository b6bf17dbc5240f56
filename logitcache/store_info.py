"""Describe a store for people (``logitcache info``) and programs (``logitcache info --json``).

    >>> description = describe_store("data/stores/digits.zarr")
    >>> print(format_description(description))
"""

from __future__ import annotations

from .errors import LogitCacheError, StoreIncompleteError
from .codecs import stored_codec
from .store import BASE_VERSION, nbytes_features, open_store


def describe_store(location, storage_options: dict | None = None) -> dict:
    """Everything a store says about itself, plus what it takes on disk."""
    store = open_store(location, storage_options=storage_options)
    teachers = {}
    for name in store.all_teacher_names:
        try:
            teacher = store.teacher(name)
        except LogitCacheError as err:  # being created, or damaged: say so, and describe the rest
            teachers[name] = {"status": "creating" if isinstance(err, StoreIncompleteError) else "damaged",
                              "problem": str(err)}
            continue
        stored = teacher.nbytes_stored()
        view_bytes = teacher.nbytes_views()
        views = teacher.views_per_sample
        teachers[name] = {
            **teacher.attrs,
            "shards_done": int(teacher.shard_done().sum()),
            "num_shards": teacher.num_shards,
            "bytes_on_disk": stored,
            "bytes_per_sample": stored / store.num_samples,
            "views_per_sample": views,
            "bytes_per_view": stored / (store.num_samples * views),
            "view_param_bytes": view_bytes,
            **({"feature_bytes": nbytes_features(teacher)} if teacher.features else {}),
        }
    return {
        "location": store.location,
        "format": store.info["format"],
        "version": store.info["version"],
        "dataset": store.dataset,
        "teachers": teachers,
    }


def _weights_line(settings: dict) -> str:
    """The teacher's weights: a file's digest, or said out loud that none was given (the builder's own
    weights: random, for most specs, which a student cannot learn anything from)."""
    parameters = _field(settings, "parameters_sha256")
    if settings.get("weights_sha256"):
        return f"  weights   file {settings['weights_sha256']}; parameters {parameters}"
    return f"  weights   none given (the builder's own: random unless it loads some); parameters {parameters}"


def format_description(d: dict) -> str:
    """A readable, aligned summary of ``describe_store``'s result."""
    data = d["dataset"]
    if data.get("kind") == "tokens":
        return format_token_description(d)
    split = f"  split {data['split']}" if data.get("split") else ""
    lines = [
        f"store     {d['location']}  (logitcache format v{d['version']}{_older(d['version'])})",
        f"dataset   {data.get('spec')}{split}: {data['num_samples']} samples, "
        f"{len(data.get('class_names') or [])} classes",
        f"          fingerprint {data['fingerprint']}",
        f"          transform {data.get('transform')}",
    ]
    for name, t, prov, settings, metrics, run in _readable_teachers(d, lines):
        num_classes, layout, views = t["num_classes"], t["layout"], t["views_per_sample"]
        outputs = data["num_samples"] * views
        shape = f"{data['num_samples']} x {views} views x {num_classes}" if t.get("views") else \
            f"{data['num_samples']} x {num_classes}"
        lines += [
            *_teacher_lines(name, t, prov, settings),
            f"  logits    {shape}, {stored_codec(t).description}, codec {t['codec']}{_ids(t)}: "
            f"{t['bytes_on_disk']:,} bytes = {t['bytes_per_sample']:.1f} bytes/sample"
            + (f", {t['bytes_per_view']:.1f} bytes/view" if t.get("views") else "")
            + f" ({outputs * num_classes * 4 / max(t['bytes_on_disk'], 1):.2f}x smaller than fp32)",
            f"  layout    {layout['rows_per_chunk']} rows/chunk, {layout['rows_per_shard']} rows/shard; "
            f"{t['shards_done']}/{t['num_shards']} shards written",
            f"  dump      batch {_field(settings, 'batch_size')}, device {_field(settings, 'device_type')}, "
            f"bf16 autocast {'on' if settings.get('bf16') else 'off'}, transform {_field(settings, 'transform')}",
        ]
        if t.get("views"):
            v = t["views"]
            size = f"{v['size'][0]}x{v['size'][1]} px" if v.get("size") else "the input's size"
            hashes = f"{v['hashes']} hashes" if v.get("hashes") else "no hashes"
            lines.append(f"  views     {views} per sample, augment {v.get('augment')}, at {size}, seed {v.get('seed')}; "
                         f"parameters and {hashes}: {t['view_param_bytes']:,} bytes "
                         f"= {t['view_param_bytes'] / outputs:.1f} bytes/view")
        lines += _feature_lines(t, data["num_samples"], views)
        if metrics:
            lines += _accuracy(metrics, run.get("teacher_outputs"), bool(t.get("views")), outputs)
            mass, note = metrics.get("mass_stored", 1.0), stored_codec(t).mass_note  # where the rest went
            if mass is None:
                lines.append(f"  mass      not known: {note}")
            elif mass < 1.0:
                lines.append(f"  mass      {mass:.2%} of the probability mass is stored exactly"
                             + (f" ({note})" if note else ""))
        lines += _closing_lines(t, run, prov)
    return "\n".join(lines)


def _closing_lines(t: dict, run: dict, prov: dict) -> list[str]:
    """When the teacher was written, its digest, and the software that wrote it."""
    lines = []
    if run.get("finished_at"):
        lines.append(f"  written   {run.get('started_at')} .. {run['finished_at']}, {run.get('sessions')} "
                     f"session(s), {_field(run, 'seconds', fmt='.1f')} s of teacher time")
    digest = (t.get("integrity") or {}).get("teacher")
    lines.append(f"  digest    {digest}" if digest else
                 "  digest    none (written before format v3: chunk checksums only)" if "integrity" not in t else
                 "  digest    recorded when the dump completes")
    software = prov.get("software", {})
    return lines + ["  software  " + ", ".join(f"{k} {v}" for k, v in software.items())]


def _ids(t: dict) -> str:
    """How a sparse teacher's class ids are stored, where they are bit-packed (format v5) or kept as
    gaps (v6)."""
    ways = (["as gaps"] if t.get("index_gaps") else []) + ([f"packed at {t['index_bits']} bits"]
                                                            if t.get("index_bits") else [])
    return f" (ids {', '.join(ways)})" if ways else ""


def _older(version: int) -> str:
    """A word on stores older than the version this logitcache makes stores of samples as (it reads
    them as they are)."""
    if version >= BASE_VERSION:
        return ""
    return f": an older format, still read; stores made now are v{BASE_VERSION}"


def _accuracy(metrics: dict, own: dict | None, views: bool, outputs: int) -> list[str]:
    """The teacher's own accuracy (its outputs before encoding, which the dump's run record keeps),
    and apart from it the stored targets' accuracy and their top-1 agreement with the teacher's."""
    over = " (every view)" if views else ""
    stored = f"top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on the dumped labels{over}"
    if own is None:  # written before the teacher's own outputs were counted, or every shard by a resumed-from run
        return [f"  accuracy  {stored}, of the stored targets"]
    rows = "" if own["rows"] == outputs else f", on the {own['rows']} rows the completing session computed"
    return [f"  accuracy  teacher top-1 {own['top1']:.2%}, top-5 {own['top5']:.2%} on the dumped labels{over} "
            f"(its own outputs, before encoding{rows})",
            f"  targets   stored targets' top-1 {metrics['top1']:.2%}; it agrees with the teacher's top-1 on "
            f"{own['agreement']:.2%}"]


def _feature_lines(t: dict, num_samples: int, views: int) -> list[str]:
    """One line per stored teacher feature: layer, reduce, shape, codec and bytes per sample (per view)."""
    lines = []
    for f in t.get("features") or []:
        stored = t["feature_bytes"][f["name"]]
        per_view = f", {stored / (num_samples * views):.1f} bytes/view" if t.get("views") else ""
        lines.append(f"  feature   {f['name']}: layer {f['layer']}, {f['reduce']} {'x'.join(map(str, f['shape']))}, "
                     f"codec {f['codec']}: {stored:,} bytes = {stored / num_samples:.1f} bytes/sample{per_view}")
    return lines


def _readable_teachers(d: dict, lines: list[str]):
    """Each readable teacher's (name, record, provenance, settings, metrics, run); a damaged one
    gets its one line in ``lines`` instead, so the rest of the store still describes itself."""
    if not d["teachers"]:
        lines.append("teachers  none yet")
    for name, t in d["teachers"].items():
        if "problem" in t:
            lines.append(f"teacher   {name!r}: {t['status']}: {t['problem']}")
            continue
        yield name, t, t["provenance"], t["settings"], t.get("metrics") or {}, t.get("run") or {}


def _teacher_lines(name: str, t: dict, prov: dict, settings: dict) -> list[str]:
    """A teacher's status, model and weights: the same for image and token stores."""
    return [f"teacher   {name!r}: {t['status']}",
            f"  model     {_field(prov, 'teacher', 'spec')} ({_field(prov, 'teacher', 'num_parameters', fmt=',')} "
            "parameters)",
            _weights_line(settings)]


def _field(record: dict, *path: str, fmt: str = "") -> str:
    """A nested field of a provenance or settings record, or '-' (stores written through the API, or
    by other tools, may leave them out)."""
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return "-" if record is None else format(record, fmt)


def format_token_description(d: dict) -> str:
    """The summary of a token store (format v4): sequences, tokens, tokenizer; per teacher its
    bytes per token and its own perplexity on the dumped targets."""
    data, tokenizer = d["dataset"], d["dataset"].get("tokenizer") or {}
    lines = [
        f"store     {d['location']}  (logitcache token store, format v{d['version']})",
        f"tokens    {data.get('spec')}  split {data.get('split') or 'all'}: {data['num_samples']} sequences x "
        f"{data['seq_len']} positions = {data['num_tokens']:,} tokens, {data['num_targets']:,} of them targets",
        f"          vocabulary {data['vocab_size']:,}; tokenizer {tokenizer.get('spec')} "
        f"({tokenizer.get('vocab_size')} ids, {tokenizer.get('identity')})",
        f"          fingerprint {data['fingerprint']}",
    ]
    for name, t, prov, settings, metrics, run in _readable_teachers(d, lines):
        lines += [
            *_teacher_lines(name, t, prov, settings),
            f"  targets   {stored_codec(t).description}, codec {t['codec']}{_ids(t)}: "
            f"{t['bytes_on_disk']:,} bytes = "
            f"{t['bytes_on_disk'] / max(data['num_tokens'], 1):.1f} bytes/token "
            f"({data['num_tokens'] * t['num_classes'] * 4 / max(t['bytes_on_disk'], 1):.0f}x smaller than fp32 logits)",
            f"  layout    {t['layout']['rows_per_chunk']} positions/chunk, {t['layout']['rows_per_shard']} positions/shard; "
            f"{t['shards_done']}/{t['num_shards']} shards written",
            f"  dump      batch {_field(settings, 'batch_size')} sequences, device {_field(settings, 'device_type')}, "
            f"bf16 autocast {'on' if settings.get('bf16') else 'off'}",
        ]
        if isinstance(settings.get("generate"), dict):
            lines.append(_generate_line(settings["generate"]))
        if metrics.get("targets"):
            lines.append(f"  teacher   perplexity {metrics['perplexity']:.3f} ({metrics['nll']:.4f} nats/token), "
                         f"next-token top-1 {metrics['top1']:.2%} over {metrics['targets']:,} targets")
            if metrics["mass_stored"] < 1.0:
                lines.append(f"  mass      the stored targets hold {metrics['mass_stored']:.2%} of the teacher's "
                             "probability mass (mean over targets)")
        lines += _closing_lines(t, run, prov)
    return "\n".join(lines)


def _generate_line(generate: dict) -> str:
    """How a ``dump --generate`` teacher wrote the stored responses."""
    how = "greedy" if generate.get("strategy") == "greedy" else \
        f"sampled at temperature {generate.get('temperature')}, top-p {generate.get('top_p')}"
    return (f"  generate  responses written by the teacher: {how}, up to {generate.get('max_new_tokens')} new tokens, "
            f"seed {generate.get('seed')}, {generate.get('decoder')}; prompts {generate.get('prompts')}")
