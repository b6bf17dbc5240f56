"""The corruption matrix: every way a stored byte or metadata field can be damaged or edited, and
what `verify` and `train` must do about it (fail with one line, never pass, never train)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke, make_store, one_error

TEACHER = "teachers/default"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """Complete v3 stores: u8 (logits + scale + offset arrays) and topk:3 (indices, logprobs, tail)."""
    root = tmp_path_factory.mktemp("pristine")
    return {codec: make_store(root / f"{codec.replace(':', '')}.zarr", codec=codec)
            for codec in ("u8", "topk:3")}


# -- mutations ---------------------------------------------------------------------------------

def chunk(array: str, shard: int = 1) -> str:
    """The object holding one shard of a teacher array (2-D arrays have a second chunk index)."""
    flat = array in ("scale", "offset", "tail", "shard_done")
    return f"{TEACHER}/{array}/c/{shard}" + ("" if flat else "/0")


def flip(name):
    def mutate(store: Path):
        data = bytearray((store / name).read_bytes())
        data[len(data) // 2] ^= 0x10
        (store / name).write_bytes(bytes(data))
    return mutate


def truncate(name):
    def mutate(store: Path):
        data = (store / name).read_bytes()
        (store / name).write_bytes(data[: len(data) // 2])
    return mutate


def delete(name):
    return lambda store: (store / name).unlink()


def swap(a, b):
    def mutate(store: Path):
        first, second = (store / a).read_bytes(), (store / b).read_bytes()
        (store / a).write_bytes(second)
        (store / b).write_bytes(first)
    return mutate


def edit(name, change):
    """Edit a zarr.json: ``change(document)`` mutates the parsed JSON in place."""
    def mutate(store: Path):
        document = json.loads((store / name).read_text())
        change(document)
        (store / name).write_text(json.dumps(document))
    return mutate


def teacher_attr(field, value):
    def change(document):
        target = document["attributes"]["logitcache_teacher"]
        *parents, leaf = field.split(".")
        for parent in parents:
            target = target[parent]
        if value is DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return edit(f"{TEACHER}/zarr.json", change)


def root_attr(field, value):
    def change(document):
        target = document["attributes"]["logitcache"]
        *parents, leaf = field.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return edit("zarr.json", change)


def array_meta(array, field, value):
    def change(document):
        document[field] = value
    return edit(f"{TEACHER}/{array}/zarr.json", change)


def write_text(name, text):
    return lambda store: (store / name).write_text(text)


DELETE = object()

# (case, codec, mutation): every case must fail `verify` and `train` with one line.
MATRIX = [
    *[(f"flip {a}", "u8", flip(chunk(a))) for a in ("logits", "scale", "offset", "shard_done", "chunk_digests")],
    ("flip keys", "u8", flip("keys/c/0")),
    ("flip labels", "u8", flip("labels/c/0")),
    *[(f"flip {a}", "topk:3", flip(chunk(a))) for a in ("indices", "logprobs", "tail")],
    *[(f"truncate {a}", "u8", truncate(chunk(a))) for a in ("logits", "scale", "chunk_digests")],
    ("truncate labels", "u8", truncate("labels/c/0")),
    ("truncate indices", "topk:3", truncate(chunk("indices"))),
    *[(f"delete {a}", "u8", delete(chunk(a))) for a in ("logits", "scale", "offset", "shard_done", "chunk_digests")],
    ("delete last shard", "u8", delete(chunk("logits", 5))),
    ("delete keys", "u8", delete("keys/c/0")),
    ("delete tail", "topk:3", delete(chunk("tail"))),
    ("swap logits", "u8", swap(chunk("logits", 0), chunk("logits", 1))),
    ("swap scale", "u8", swap(chunk("scale", 0), chunk("scale", 1))),
    ("swap offset", "u8", swap(chunk("offset", 2), chunk("offset", 3))),
    ("swap logits with the last", "u8", swap(chunk("logits", 1), chunk("logits", 5))),
    ("swap chunk digests", "u8", swap(chunk("chunk_digests", 0), chunk("chunk_digests", 1))),
    ("swap logits and digests", "u8", lambda s: (swap(chunk("logits", 0), chunk("logits", 1))(s),
                                                   swap(chunk("chunk_digests", 0), chunk("chunk_digests", 1))(s))),
    ("swap indices", "topk:3", swap(chunk("indices", 0), chunk("indices", 1))),
    ("edit codec u8 -> fp16", "u8", teacher_attr("codec", "fp16")),
    ("edit codec u8 -> topk", "u8", teacher_attr("codec", "topk:3")),
    ("edit num_classes 12", "u8", teacher_attr("num_classes", 12)),
    ("edit num_classes 9", "u8", teacher_attr("num_classes", 9)),
    ("edit num_classes 'ten'", "u8", teacher_attr("num_classes", "ten")),
    ("edit rows_per_shard", "u8", teacher_attr("layout.rows_per_shard", 128)),
    ("edit rows_per_shard 1", "u8", teacher_attr("layout.rows_per_shard", 1)),
    ("edit rows_per_chunk", "u8", teacher_attr("layout.rows_per_chunk", 128)),
    ("edit metrics", "u8", teacher_attr("metrics.top1", 0.99)),
    ("edit settings", "u8", teacher_attr("settings.teacher", "torchvision:resnet152")),
    ("edit status", "u8", teacher_attr("status", "writing")),
    ("edit status bogus", "u8", teacher_attr("status", "done")),
    ("edit views", "u8", teacher_attr("views", {"count": 1, "size": [30000, 30000], "params": ["x0"]})),
    ("edit content digest", "u8", teacher_attr("integrity.content", "sha256:" + "0" * 64)),
    ("edit teacher digest", "u8", teacher_attr("integrity.teacher", "sha256:" + "5" * 64)),
    ("remove integrity", "u8", teacher_attr("integrity", DELETE)),
    ("edit teacher attr type", "u8", edit(f"{TEACHER}/zarr.json",
                                          lambda d: d["attributes"].update(logitcache_teacher="complete"))),
    ("edit root num_samples 1e12", "u8", root_attr("dataset.num_samples", 10**12)),
    ("edit root num_samples 1e9", "u8", root_attr("dataset.num_samples", 10**9)),
    ("edit root num_samples -1", "u8", root_attr("dataset.num_samples", 1436)),
    ("edit root fingerprint", "u8", root_attr("dataset.fingerprint", "sha256:" + "1" * 64)),
    ("edit root class names", "u8", root_attr("dataset.class_names", [str(i) for i in range(9, -1, -1)])),
    ("edit root version", "u8", root_attr("version", 99)),
    ("edit logits dtype", "u8", array_meta("logits", "data_type", "int8")),
    ("edit logits shape", "u8", array_meta("logits", "shape", [1437, 12])),
    ("edit logits fill", "u8", array_meta("logits", "fill_value", 7)),
    ("edit scale shape", "u8", array_meta("scale", "shape", [2000])),
    ("delete logits zarr.json", "u8", delete(f"{TEACHER}/logits/zarr.json")),
    ("delete scale zarr.json", "u8", delete(f"{TEACHER}/scale/zarr.json")),
    ("delete shard_done zarr.json", "u8", delete(f"{TEACHER}/shard_done/zarr.json")),
    ("delete chunk_digests zarr.json", "u8", delete(f"{TEACHER}/chunk_digests/zarr.json")),
    ("delete teachers zarr.json", "u8", delete("teachers/zarr.json")),
    ("invalid teacher json", "u8", write_text(f"{TEACHER}/zarr.json", "{not json")),
    ("invalid logits json", "u8", write_text(f"{TEACHER}/logits/zarr.json", "[]")),
    ("invalid root json", "u8", write_text("zarr.json", "{")),
]


@pytest.fixture
def damaged(request, pristine, tmp_path) -> Path:
    _, codec, mutate = request.param
    store = tmp_path / "damaged.zarr"
    shutil.copytree(pristine[codec], store)
    mutate(store)
    return store


@pytest.mark.parametrize("damaged", MATRIX, indirect=True, ids=[case for case, _, _ in MATRIX])
def test_verify_and_train_refuse_every_damaged_store(damaged, tmp_path):
    one_error(invoke("verify", damaged))
    one_error(invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                     "--store", damaged, "--loss", "kl", "--epochs", "1", "--no-progress"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_swap_is_caught_when_logits_are_streamed_too(pristine, tmp_path):
    """Streamed chunk by chunk (a 1 KiB cache), each chunk read is checked against its digest."""
    store = tmp_path / "s.zarr"
    shutil.copytree(pristine["u8"], store)
    swap(chunk("logits", 0), chunk("logits", 1))(store)
    swap(chunk("scale", 0), chunk("scale", 1))(store)
    line = one_error(invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset",
                            "digits@train", "--store", store, "--loss", "kl", "--epochs", "1", "--no-progress",
                            "--cache-budget", "1KiB"))
    assert "digest mismatch" in line


def test_the_pristine_stores_pass_and_train(pristine, tmp_path):
    """The control: the matrix's failures come from the damage, not from the stores."""
    for codec, store in pristine.items():
        result = invoke("verify", store)
        assert result.exit_code == 0 and "every chunk matches its position-bound digest" in result.output
        result = invoke("train", "--out", tmp_path / codec.replace(":", ""), "--student", "mlp:hidden=8",
                        "--dataset", "digits@train", "--store", store, "--loss", "kl", "--epochs", "1",
                        "--no-progress")
        assert result.exit_code == 0, result.output


def test_matrix_messages_name_the_damage(pristine, tmp_path):
    """A few cases whose one line must say what is wrong, not just that something is."""
    cases = {
        "swap logits": (swap(chunk("logits", 0), chunk("logits", 1)), "digest mismatch"),
        "edit codec": (teacher_attr("codec", "fp16"), "array 'logits'"),
        "ledger": (delete(chunk("shard_done", 2)), "not in its ledger"),
        "metrics": (teacher_attr("metrics.top1", 0.99), "metadata digest mismatch"),
        "num_samples": (root_attr("dataset.num_samples", 10**12), "num_samples"),
        "views": (teacher_attr("views", {"count": 1, "size": [30000, 30000], "params": ["x0"]}), "views.size"),
    }
    for name, (mutate, needle) in cases.items():
        store = tmp_path / f"{name.replace(' ', '_')}.zarr"
        shutil.copytree(pristine["u8"], store)
        mutate(store)
        assert needle in one_error(invoke("train", "--out", tmp_path / name, "--student", "mlp:hidden=8",
                                          "--dataset", "digits@train", "--store", store, "--loss", "kl",
                                          "--epochs", "1", "--no-progress")), name


def test_info_says_a_damaged_teacher_is_damaged(pristine, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(pristine["u8"], store)
    delete(chunk("shard_done", 2))(store)
    result = invoke("info", store)
    assert "'default': damaged" in result.output and "complete" not in result.output.split("damaged")[1][:40]


def test_a_forged_teacher_digest_cannot_pass_for_the_pinned_teacher(pristine, tmp_path):
    """Another teacher's group under this one's published digest: the stored digest is recomputed
    from the metadata and content digests, so the forgery fails verify and --expect-teacher."""
    other = make_store(tmp_path / "other.zarr", codec="u8", teacher="tests.factories:nan_free_other_teacher")
    forged = tmp_path / "forged.zarr"
    shutil.copytree(pristine["u8"], forged)
    published = json.loads((forged / TEACHER / "zarr.json").read_text())["attributes"]["logitcache_teacher"][
        "integrity"]["teacher"]
    shutil.rmtree(forged / TEACHER)
    shutil.copytree(other / TEACHER, forged / TEACHER)
    teacher_attr("integrity.teacher", published)(forged)
    verified = invoke("verify", forged)
    one_error(verified)
    assert "teacher digest mismatch" in verified.output
    line = one_error(invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset",
                            "digits@train", "--store", forged, "--loss", "kl", "--epochs", "1", "--no-progress",
                            "--expect-teacher", published))
    assert "teacher digest mismatch" in line


def test_a_teacher_overwritten_while_a_run_streams_it_stops_the_run(pristine, tmp_path):
    """Workers and later chunk reads reopen the store; they must find the teacher the run began with."""
    from logitcache.train.paired_data import TeacherLogits

    from logitcache.errors import CorruptStoreError

    store = tmp_path / "s.zarr"
    shutil.copytree(pristine["u8"], store)
    logits = TeacherLogits.open(str(store), budget_bytes=1024)  # streamed: nothing read yet
    assert not logits.in_memory
    make_store(store, codec="u8", teacher="tests.factories:nan_free_other_teacher", overwrite=True)
    with pytest.raises(CorruptStoreError, match="changed while this run was reading it"):
        logits[0]
