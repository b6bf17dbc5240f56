"""Multi-view stores: exact replay, hash checks, determinism, resume, training, and bad input."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from logitcache.train.paired_data import EpochSampler, PairedDataset, TeacherLogits

from logitcache.cli import cli
from logitcache.errors import SpecError, StoreMismatchError
from logitcache.sources import get_dataset
from logitcache.store import open_store, verify_store
from logitcache.train import TrainConfig, train
from logitcache.views.view_specs import apply_view, parse_augment, pixel_box
from logitcache.views.replay import ViewReplay
from tests import factories
from tests.conftest import make_store, store_contents

VIEWS = dict(augment="crop=0.4-1,flip", views=3, record_view_hashes=True)


def quiet(*_):
    pass


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def views_store(tmp_path_factory):
    """digits@train, 3 views per sample (crop + flip), fp32, view hashes recorded."""
    return make_store(tmp_path_factory.mktemp("views") / "views.zarr", codec="fp32", **VIEWS)


# -- the spec ------------------------------------------------------------------------------------

def test_spec_parses_presets_and_round_trips():
    augment = parse_augment("crop=0.35-1:3/4-4/3,flip,size=224")
    assert augment.scale == (0.35, 1.0) and augment.flip == 0.5 and augment.size == (224, 224)
    assert parse_augment(augment.spec) == augment
    assert parse_augment("imagenet").size == (224, 224)
    cifar = parse_augment("cifar")
    assert cifar.shift == 0.125 and cifar.scale is None and cifar.size is None
    assert parse_augment("size=12x16").size == (12, 16)


@pytest.mark.parametrize("spec, needle", [
    ("bogus=1", "unknown step 'bogus'"),
    ("crop=0.5", "needs a range A-B"),
    ("crop=0.8-0.2", "must satisfy"),
    ("crop=0.2-1.5", "must satisfy"),
    ("crop=0.5-1:0-0", "must satisfy"),
    ("shift=0", "fraction in (0, 1)"),
    ("flip=2", "probability in [0, 1]"),
    ("size=0", "size needs N or HxW"),
    ("size=axb", "size needs N or HxW"),
    ("crop=0.5-1,shift=0.1", "crop or shift, not both"),
    ("flip,flip", "given twice"),
    (",", "has no steps"),
])
def test_bad_specs_are_clear_errors(spec, needle):
    with pytest.raises(SpecError, match=None) as error:
        parse_augment(spec)
    assert needle in str(error.value)


def test_draws_depend_on_seed_and_index_only_and_stay_in_range():
    augment = parse_augment("crop=0.2-1,flip")
    a = augment.draw(seed=3, index=10, views=50)
    assert np.array_equal(a, augment.draw(seed=3, index=10, views=50))
    assert not np.array_equal(a, augment.draw(seed=4, index=10, views=50))
    assert not np.array_equal(a, augment.draw(seed=3, index=11, views=50))
    x0, y0, w, h, flip = a.astype(np.float64).T
    area = w * h
    assert (area >= 0.2 - 1e-2).all() and (area <= 1 + 1e-3).all()
    assert (x0 >= 0).all() and (x0 + w <= 1 + 1e-3).all() and (y0 + h <= 1 + 1e-3).all()
    assert set(flip) <= {0.0, 1.0} and 0 < flip.mean() < 1
    shift = parse_augment("shift=0.125").draw(0, 0, 200).astype(np.float64)
    assert np.abs(shift[:, :2]).max() <= 0.125 and (shift[:, 2:4] == 1).all()


def test_a_view_is_the_crop_resized_then_flipped():
    image = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    params = np.array([0.25, 0.5, 0.5, 0.25, 1.0], dtype=np.float16)
    assert pixel_box(params, 8, 8) == (4, 2, 2, 4)
    view = apply_view(image, params, size=(2, 4))
    assert torch.equal(view, image[:, 4:6, 2:6].flip(-1))
    whole = np.array([0, 0, 1, 1, 0], dtype=np.float16)
    assert torch.equal(apply_view(image, whole), image)
    shifted = apply_view(image, np.array([-0.25, 0, 1, 1, 0], dtype=np.float16))  # 2 px right, zeros enter
    assert torch.equal(shifted[:, :, 2:], image[:, :, :6]) and (shifted[:, :, :2] == 0).all()
    with pytest.raises(SpecError, match="end --transform with to_tensor"):
        apply_view(np.zeros((8, 8)), whole)


def test_views_are_cut_before_the_final_normalisation(tmp_path):
    folder = tmp_path / "images"
    factories.write_image_folder(folder)
    source = get_dataset(f"imagefolder:{folder}", for_views=True)
    assert source.transform == "resize=256,to_tensor,normalize=imagenet"  # the default, less its center crop
    assert source.view_normalize == "normalize=imagenet"
    image = source.dataset[0][0]
    assert image.shape[1] == 256 and 0 <= float(image.min()) and float(image.max()) <= 1  # not normalised yet
    whole = np.array([0, 0, 1, 1, 0], dtype=np.float16)
    view = ViewReplay(None, (32, 32), normalize=source.view_normalize).cut(image, whole)
    assert float(view.min()) < 0  # normalised after the cut
    with pytest.raises(SpecError, match="must be deterministic"):
        get_dataset("digits", transform="flip", for_views=True)


def test_student_side_colour_and_erasing_leave_the_replay_exact(tmp_path):
    folder = tmp_path / "images"
    factories.write_image_folder(folder)
    source = get_dataset(f"imagefolder:{folder}", transform="to_tensor,normalize=imagenet", for_views=True)
    params = parse_augment("crop=0.5-1,size=12").draw(0, 0, 2)[None]
    plain = ViewReplay(params, (12, 12), normalize=source.view_normalize)
    student = ViewReplay(params, (12, 12), normalize=source.view_normalize, colour="color_jitter=0.8:0.8",
                         extras="erasing=1")
    image = source.dataset[0][0]
    torch.manual_seed(0)
    assert not torch.equal(student.build(image, 0, 1), plain.build(image, 0, 1))
    assert torch.equal(student.cut(image, params[0, 1]), plain.build(image, 0, 1))  # what hashes are checked on


# -- exact replay --------------------------------------------------------------------------------

def test_replayed_views_equal_the_teachers_inputs_bit_for_bit(tmp_path):
    factories.RECORDED.clear()
    store = make_store(tmp_path / "rec.zarr", teacher="tests.factories:recording_teacher", codec="fp32", **VIEWS)
    seen = torch.cat(factories.RECORDED[1:])  # the first call is the one-sample probe
    teacher = open_store(store).teacher()
    k, n = teacher.views_per_sample, teacher.num_samples
    assert seen.shape == (n * k, 1, 8, 8)
    params = teacher.read_view_params(0, n)
    dataset = get_dataset("digits@train").dataset
    paired = PairedDataset(dataset, TeacherLogits.open(str(store)), ViewReplay(params, None))
    logits = teacher.read(0, n)
    differing = 0
    for row in range(n):
        for view in range(k):
            replayed, label, target = paired[row * k + view]
            differing += not torch.equal(replayed, seen[row * k + view])
            assert torch.equal(target, torch.from_numpy(logits[row, view]))
    assert differing == 0
    # Not trivially equal: the views of one sample differ from each other.
    assert not torch.equal(seen[0], seen[1])


def test_views_replay_at_the_students_resolution(views_store):
    teacher = open_store(views_store).teacher()
    image = get_dataset("digits@train").dataset[5][0]
    replay = ViewReplay(teacher.read_view_params(0, teacher.num_samples), (16, 16))
    big = replay.build(image, 5, 1)
    assert big.shape == (1, 16, 16)
    expected = apply_view(image, teacher.read_view_params(5, 6)[0, 1], (16, 16))
    assert torch.equal(big, expected)


# -- the store -----------------------------------------------------------------------------------

def test_store_layout_version_and_info(views_store, digits_store):
    store = open_store(views_store)
    teacher = store.teacher()
    assert store.info["version"] == 3 and open_store(digits_store).info["version"] == 3
    assert teacher.views_per_sample == 3 and teacher.has_view_hashes
    assert teacher.read(0, 4).shape == (4, 3, 10) and teacher.take([9, 2]).shape == (2, 3, 10)
    assert teacher.read_view_params(0, 4).shape == (4, 3, 5) and teacher.read_view_hashes(0, 4).dtype == np.uint64
    assert teacher.views["params"] == ["x0", "y0", "w", "h", "flip"]
    result = invoke("info", views_store)
    assert result.exit_code == 0
    assert "1437 x 3 views x 10" in result.output and "bytes/view" in result.output
    assert "views     3 per sample, augment crop=0.4-1" in result.output
    data = json.loads(invoke("info", views_store, "--json").output)["teachers"]["default"]
    assert data["views_per_sample"] == 3
    assert data["bytes_per_view"] == pytest.approx(data["bytes_on_disk"] / (1437 * 3))


def test_multi_view_store_is_refused_by_a_v1_reader(views_store, monkeypatch):
    from logitcache.errors import StoreVersionError
    from logitcache.store import _store

    monkeypatch.setattr(_store, "FORMAT_VERSION", 1)
    with pytest.raises(StoreVersionError, match="format v3, newer than the v1"):
        open_store(views_store)


def test_two_view_dumps_give_identical_bytes_with_any_workers_and_batches(tmp_path, views_store):
    make_store(tmp_path / "again.zarr", codec="fp32", workers=2, batch_size=7, **VIEWS)
    assert _with_batch(store_contents(tmp_path / "again.zarr"), 7) == _with_batch(store_contents(views_store), 7)


def _with_batch(contents, batch_size):
    """The batch size is recorded in the settings, so the metadata digests differ with it; the
    content digest (every chunk digest) and everything else must be equal."""
    key = "teachers/default/zarr.json"
    meta = json.loads(contents[key])
    teacher = meta["attributes"]["logitcache_teacher"]
    teacher["settings"]["batch_size"] = batch_size
    teacher["integrity"] = {k: v for k, v in teacher["integrity"].items() if k not in ("metadata", "teacher")}
    return {**contents, key: json.dumps(meta, sort_keys=True).encode()}


def test_an_interrupted_view_dump_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    options = dict(teacher="tests.factories:breaking_teacher", codec="fp32", **VIEWS)
    reference = make_store(tmp_path / "straight.zarr", **options)
    monkeypatch.setenv("LOGITCACHE_TEST_FAIL_AFTER", "30")  # the probe, then 29 batches of 13-batch shards
    with pytest.raises(factories.TeacherFailed):
        make_store(tmp_path / "cut.zarr", **options)
    teacher = open_store(tmp_path / "cut.zarr").teacher("default")
    assert not teacher.is_complete and 0 < teacher.shard_done().sum() < teacher.num_shards
    monkeypatch.delenv("LOGITCACHE_TEST_FAIL_AFTER")
    make_store(tmp_path / "cut.zarr", **options)
    assert store_contents(tmp_path / "cut.zarr") == store_contents(reference)


def test_a_partial_view_store_checks_and_trains_on_its_written_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITCACHE_TEST_FAIL_AFTER", "30")
    with pytest.raises(factories.TeacherFailed):
        make_store(tmp_path / "cut.zarr", teacher="tests.factories:breaking_teacher", **VIEWS)
    lines = []
    summary = train(view_run(tmp_path, "run", tmp_path / "cut.zarr", epochs=1, allow_partial=True, check_views=True),
                    log=lines.append)
    done = int(open_store(tmp_path / "cut.zarr").teacher("default").shard_done().sum())
    assert any("all replay exactly" in line for line in lines) and summary.last["train_kd"] > 0
    assert any(f"{done * 256} samples x 3 views" in line for line in lines)


def test_other_view_settings_do_not_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITCACHE_TEST_FAIL_AFTER", "3")
    with pytest.raises(KeyboardInterrupt):
        make_store(tmp_path / "cut.zarr", teacher="tests.factories:interrupted_teacher", **VIEWS)
    monkeypatch.delenv("LOGITCACHE_TEST_FAIL_AFTER")
    with pytest.raises(StoreMismatchError, match="views differ"):
        make_store(tmp_path / "cut.zarr", teacher="tests.factories:interrupted_teacher", **{**VIEWS, "views": 2})


def test_verify_catches_a_corrupted_view_parameter_chunk(tmp_path):
    store = make_store(tmp_path / "v.zarr", augment="flip", views=2)
    chunk = next((store / "teachers" / "default" / "view_params" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify_store(store)
    assert not report.ok and any("checksum" in p for p in report.problems)


def test_sparse_codecs_store_views_too(tmp_path):
    store = make_store(tmp_path / "top.zarr", codec="topk:3", augment="shift=0.25", views=2)
    teacher = open_store(store).teacher()
    targets = teacher.read_targets(0, 5)
    assert targets["indices"].shape == (5, 2, 3)
    assert teacher.read(0, 5).shape == (5, 2, 10)
    summary = train(TrainConfig(out=str(tmp_path / "run"), student="mlp:hidden=8", dataset="digits@train",
                                store=str(store), loss="kl", epochs=1, progress=False), log=quiet)
    assert summary.last["train_kd"] > 0


# -- changed data is caught ----------------------------------------------------------------------

@pytest.fixture
def image_views(tmp_path):
    folder = tmp_path / "images"
    factories.write_image_folder(folder)
    store = tmp_path / "img.zarr"
    result = invoke("dump", store, "--teacher", "tests.factories:image_teacher", "--dataset", f"imagefolder:{folder}",
                    "--transform", "to_tensor,normalize=imagenet", "--augment", "crop=0.3-1,flip,size=12",
                    "--views", "4", "--record-view-hashes", "--no-progress")
    assert result.exit_code == 0, result.output
    return folder, store


def test_a_changed_image_is_caught_by_verify_and_train(tmp_path, image_views):
    folder, store = image_views
    dataset = f"imagefolder:{folder}"
    ok = invoke("verify", store, "--dataset", dataset)
    assert ok.exit_code == 0 and "48 views rebuilt from the dataset, every hash matches" in ok.output
    from PIL import Image

    path = folder / "class1" / "img2.png"
    pixels = np.array(Image.open(path))
    pixels[3, 5, 0] ^= 1  # one bit of one pixel
    Image.fromarray(pixels).save(path)
    bad = invoke("verify", store, "--dataset", dataset)
    assert bad.exit_code == 1 and "'class1/img2.png'" in bad.output and "differ from the dump" in bad.output
    train_args = ["train", "--out", tmp_path / "run", "--student", "tests.factories:image_teacher", "--dataset", dataset,
                  "--store", store, "--epochs", "1", "--batch-size", "4", "--no-progress", "--check-views"]
    result = invoke(*train_args)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1 and "class1/img2.png" in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "last.pt").exists()


def test_views_need_tensor_inputs(tmp_path):
    folder = tmp_path / "images"
    factories.write_image_folder(folder)
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:image_teacher", "--dataset",
                    f"imagefolder:{folder}", "--transform", "resize=16", "--augment", "flip", "--no-progress")
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1 and "end --transform with to_tensor" in errors[0], result.output
    assert not (tmp_path / "s.zarr").exists()


def test_a_multi_view_ensemble_of_other_views_is_one_line_on_the_cli(tmp_path):
    store = make_store(tmp_path / "e.zarr", teacher_name="a", augment="flip", views=2)
    make_store(store, teacher_name="c", augment="flip", views=2, seed=5)
    result = invoke("train", "--out", tmp_path / "run", "--student", "mlp:hidden=8", "--dataset", "digits@train",
                    "--store", store, "--teacher", "a,c", "--epochs", "1", "--no-progress")
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1 and "saw different views" in errors[0], result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_images_of_different_sizes_need_a_view_size(tmp_path):
    folder = tmp_path / "images"
    factories.write_image_folder(folder)
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", "tests.factories:image_teacher", "--dataset",
                    f"imagefolder:{folder}", "--transform", "to_tensor", "--augment", "flip", "--no-progress")
    assert result.exit_code == 1 and "size=N" in result.output and "Traceback" not in result.output


# -- training from views -------------------------------------------------------------------------

def view_run(tmp_path, name, store, **overrides):
    options = dict(out=str(tmp_path / name), student="mlp:hidden=16", dataset="digits@train",
                   val_dataset="digits@val", store=str(store), loss="kl", epochs=3, batch_size=64, progress=False)
    options.update(overrides)
    return TrainConfig(**options)


def steps(run_dir):
    return (run_dir / "steps.csv").read_text()


def test_view_training_is_deterministic_and_resumes_exactly(tmp_path, views_store):
    options = dict(augment="erasing=0.3", mixup=0.2, cutmix=1.0)
    lines = []
    train(view_run(tmp_path, "a", views_store, **options), log=lines.append)
    assert any("replaying 3 stored views per sample" in line and "erasing=0.3" in line for line in lines)
    train(view_run(tmp_path, "b", views_store, **options), log=quiet)
    assert steps(tmp_path / "a") == steps(tmp_path / "b")

    def stop_after_epoch_one(line):
        if line.startswith("epoch 1/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(view_run(tmp_path, "c", views_store, **options), log=stop_after_epoch_one)
    train(view_run(tmp_path, "c", views_store, resume=True, **options), log=quiet)
    assert steps(tmp_path / "c") == steps(tmp_path / "a")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    c = torch.load(tmp_path / "c" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[key], c[key]) for key in a)


def test_streamed_view_logits_train_every_sample(tmp_path, views_store):
    lines = []
    train(view_run(tmp_path, "stream", views_store, epochs=1, loss="dist", cache_budget=4 * 256 * 30 * 4),
          log=lines.append)
    assert any("streamed" in line for line in lines) and not any("in memory" in line for line in lines)
    assert len(steps(tmp_path / "stream").splitlines()) == 1 + 23  # header + ceil(1437 / 64) steps


def test_view_choice_random_or_cycle():
    rows = np.arange(20)
    sampler = EpochSampler(rows, seed=1, views=4, view_order="cycle")
    seen = []
    for epoch in range(1, 5):
        sampler.set_epoch(epoch)
        seen.append(sorted(list(sampler)))
    per_row = np.array(seen) % 4  # (epochs, rows): every row shows each of its 4 views once
    assert all(sorted(per_row[:, r]) == [0, 1, 2, 3] for r in range(20))
    random = EpochSampler(rows, seed=1, views=4)
    random.set_epoch(2)
    first = list(random)
    assert first == list(random) and sorted(i // 4 for i in first) == rows.tolist()
    random.set_epoch(3)
    assert [i % 4 for i in sorted(first)] != [i % 4 for i in sorted(random)]


def test_a_multi_view_ensemble_needs_the_same_views(tmp_path):
    store = make_store(tmp_path / "e.zarr", teacher_name="a", augment="flip", views=2)
    make_store(store, teacher_name="b", augment="flip", views=2, teacher="tests.factories:slow_teacher")
    make_store(store, teacher_name="c", augment="flip", views=2, seed=5)
    assert TeacherLogits.open(str(store), "a,b").views["count"] == 2
    with pytest.raises(StoreMismatchError, match="saw different views"):
        TeacherLogits.open(str(store), "a,c")


# -- Mixup and CutMix ----------------------------------------------------------------------------

def test_mixed_teacher_logits_give_the_mixed_distribution():
    from logitcache.mixing import mix_logits

    a, b = torch.randn(6, 10) * 3, torch.randn(6, 10) * 3
    for temperature in (1.0, 4.0):
        mixed = mix_logits(a, b, 0.3, temperature)
        expected = 0.3 * torch.softmax(a / temperature, 1) + 0.7 * torch.softmax(b / temperature, 1)
        assert torch.allclose(torch.softmax(mixed / temperature, 1), expected, atol=1e-6)


def test_cutmix_weight_is_the_share_of_pixels_kept():
    from logitcache.mixing import Mixer

    inputs = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous()
    batch = Mixer(cutmix=1.0)(inputs, torch.arange(4), torch.zeros(4, 3), np.random.default_rng(0))
    kept = (batch.inputs == inputs).float().mean(dim=(1, 2, 3))
    assert torch.allclose(kept, torch.full((4,), batch.lam))
    assert 0 < batch.lam < 1


# -- bad input -----------------------------------------------------------------------------------

DUMP = ["dump", "{tmp}/s.zarr", "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
        "--no-progress"]
BAD_DUMP = [
    ("zero views", ["--augment", "flip", "--views", "0"], "--views must be at least 1"),
    ("views without augment", ["--views", "2"], "--views needs --augment"),
    ("hashes without augment", ["--record-view-hashes"], "add --augment"),
    ("unknown step", ["--augment", "rotate=10"], "unknown step 'rotate'"),
    ("bad range", ["--augment", "crop=1-0.5"], "must satisfy"),
    ("random base transform", ["--augment", "flip", "--transform", "flip"], "must be deterministic"),
]


@pytest.mark.parametrize("name, extra, needle", BAD_DUMP, ids=[b[0] for b in BAD_DUMP])
def test_bad_view_dump_input_is_one_line(tmp_path, name, extra, needle):
    result = invoke(*[a.format(tmp=tmp_path) for a in DUMP], *extra)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(errors) == 1 and needle in errors[0], result.output
    assert not (tmp_path / "s.zarr").exists()


TRAIN = ["train", "--out", "{tmp}/run", "--student", "mlp:hidden=8", "--dataset", "digits@train", "--epochs", "1",
         "--no-progress", "--store"]
BAD_TRAIN = [
    ("view size on a single-view store", "{plain}", ["--view-size", "12"], "this run has none"),
    ("check views on a single-view store", "{plain}", ["--check-views"], "this run has none"),
    ("view order on a single-view store", "{plain}", ["--view-order", "cycle"], "this run has none"),
    ("zero view size", "{views}", ["--view-size", "0"], "--view-size must be at least 1"),
    ("bad view order", "{views}", ["--view-order", "zigzag"], "Invalid value for '--view-order'"),
    ("geometric student augment", "{views}", ["--augment", "random_crop=8:1,flip"], "would move the student off"),
    ("resizing student augment", "{views}", ["--augment", "resize=12"], "may only add steps it does not replay"),
    ("bad colour jitter", "{views}", ["--augment", "color_jitter=a"], "color_jitter takes B[:C[:S[:H]]]"),
    ("other transform", "{views}", ["--transform", "resize=8"], "would change them"),
    ("check views without hashes", "{nohash}", ["--check-views"], "recorded no view hashes"),
    ("negative mixup", "{views}", ["--mixup", "-1"], "Beta alpha >= 0"),
    ("dkd with mixup", "{views}", ["--loss", "dkd", "--cutmix", "1"], "a mixed sample has two"),
    ("mixup from sampled classes", "{sampled}", ["--loss", "kl", "--mixup", "0.2"], "which --mixup/--cutmix cannot"),
    ("cutmix on flat inputs", "{plain}", ["--loss", "kl", "--cutmix", "1", "--dataset",
                                          "tests.factories:flat_digits"], "use --mixup"),
    ("student at another size without val transform", "{views}",
     ["--view-size", "12", "--val-dataset", "digits@val"], "give a --val-transform"),
]


@pytest.mark.parametrize("name, store, extra, needle", BAD_TRAIN, ids=[b[0] for b in BAD_TRAIN])
def test_bad_view_train_input_is_one_line(tmp_path, views_store, digits_store, name, store, extra, needle):
    made = {"nohash": dict(augment="flip", views=2), "sampled": dict(codec="sample:4")}
    name_of = store.strip("{}")
    if name_of in made:
        make_store(tmp_path / f"{name_of}.zarr", **made[name_of])
    store = store.format(plain=digits_store, views=views_store, nohash=tmp_path / "nohash.zarr",
                         sampled=tmp_path / "sampled.zarr")
    argv = [a.format(tmp=tmp_path) for a in TRAIN]
    if "--dataset" in extra:  # a later --dataset replaces the default one
        del argv[argv.index("--dataset"):argv.index("--dataset") + 2]
    result = invoke(*argv, store, *extra)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(errors) == 1 and needle in errors[0], result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_packed_multi_view_store_verifies_and_replays(tmp_path, views_store):
    from logitcache.store import pack_store

    packed = tmp_path / "views.zip"
    pack_store(str(views_store), str(packed))
    assert verify_store(str(packed)).ok
    result = invoke("verify", packed, "--dataset", "digits@train", "--workers", "2")  # forked readers of a zip
    assert result.exit_code == 0 and "4311 views rebuilt from the dataset, every hash matches" in result.output
    teacher = open_store(str(packed)).teacher()
    assert np.array_equal(teacher.read_view_params(0, 100), open_store(views_store).teacher().read_view_params(0, 100))


def test_a_teacher_written_through_the_api_without_settings_loads(tmp_path):
    """Stores made by other tools through create_teacher need not record a transform."""
    from logitcache.store import choose_layout, create_store, get_codec

    store = create_store(tmp_path / "api.zarr", keys=["a", "b", "c"], labels=[0, 1, 0], dataset={"spec": "api"})
    codec = get_codec("fp32")
    teacher = store.create_teacher("t", num_classes=2, codec=codec, layout=choose_layout(3, 2, 4), settings={},
                                   provenance={})
    teacher.write_shard(0, np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32))
    teacher.mark_complete()
    logits = TeacherLogits.open(str(tmp_path / "api.zarr"))
    assert logits.transform is None and logits.views is None and torch.equal(logits[1], torch.tensor([3.0, 4.0]))
