"""Students that learn from teacher features: end to end from a store, exact resume with the connectors,
the same loss from cached features as from the teacher in the loop, and bad options as one line."""

import csv

import pytest
import torch

from logitcache.features.distiller import FeatureRun
from logitcache.sources import get_dataset
from logitcache.sources.checkpoints import load_checkpoint
from logitcache.sources.checkpoints import model_from_checkpoint
from logitcache.store import open_store
from logitcache.train import TrainConfig, train
from tests import feature_factories
from tests.conftest import invoke, make_store, one_error

FEATURES = "s1=2:attention,s2=5,s3=9:gram,emb=11:pool"
ALL = "at,rkd,fitnet,ickd,reviewkd"
STUDENT_LAYERS = "s1=2,s2=5,s3=9,emb=11"
STUDENT = "tests.feature_factories:conv_student"


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory):
    """digits@val (360 samples: small, so these runs are quick) through the seeded conv teacher."""
    return make_store(tmp_path_factory.mktemp("features") / "f.zarr", teacher="tests.feature_factories:conv_teacher",
                      dataset="digits@val", features=FEATURES, codec="fp32", feature_codec="fp32")


def config(tmp_path, name, store, **overrides):
    options = dict(out=str(tmp_path / name), student=STUDENT, dataset="digits@val", store=str(store), loss="kl", feature_loss=ALL, student_features=STUDENT_LAYERS, epochs=2,
                   batch_size=64, progress=False)
    options.update(overrides)
    return TrainConfig(**options)


def steps(run_dir) -> list[list[float]]:
    with open(run_dir / "steps.csv") as file:
        return [[float(v) for v in row[1:]] for row in list(csv.reader(file))[1:]]


def test_five_feature_losses_train_and_resume_exactly_with_their_connectors(tmp_path, feature_store):
    summary = train(config(tmp_path, "a", feature_store), log=lambda *_: None)
    assert summary.history[1]["train_loss"] < summary.history[0]["train_loss"]  # the (untrained) teacher is learnt

    def stop_after_epoch_one(line):
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "c", feature_store), log=stop_after_epoch_one)
    train(config(tmp_path, "c", feature_store, resume=True), log=lambda *_: None)
    assert steps(tmp_path / "c") == steps(tmp_path / "a")
    a, c = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "c" / "last.pt")
    assert all(torch.equal(a["connectors"][k], c["connectors"][k]) for k in a["connectors"])
    assert {key.split(".")[1] for key in a["connectors"]} == {"fitnet", "ickd", "reviewkd"}  # AT and RKD have none
    student = model_from_checkpoint(tmp_path / "a" / "best.pt")  # the exported student is the plain student
    assert set(student.state_dict()) == set(feature_factories.conv_student().state_dict())


def test_cached_features_give_the_teachers_loss_on_the_same_step(tmp_path, feature_store):
    source = get_dataset("digits@val")
    inputs = torch.stack([source.dataset[i][0] for i in range(32)])
    options = config(tmp_path, "x", feature_store)
    values = []
    for online in (None, feature_factories.conv_teacher().eval()):
        torch.manual_seed(0)  # the same connectors
        student = feature_factories.conv_student()
        if online is not None:
            options.features, options.store = FEATURES, None
        run = FeatureRun.build(options.feature_options(), student, inputs[0], torch.device("cpu"), store=open_store(feature_store),
                               teacher_name="default", rows=torch.arange(360).numpy(), online=online)
        student.train()
        cached = None
        if online is None:
            items = [run.reader[i] for i in range(32)]
            cached = {name: torch.stack([item[name] for item in items]) for name in items[0]}
        else:
            with torch.inference_mode(), run.online_tap():
                online(inputs)
        with run.student_tap():
            student(inputs)
        values.append(run.loss(cached, torch.device("cpu"), epoch=30).item())
    assert values[0] == pytest.approx(values[1], rel=1e-5) and values[0] > 0


def test_an_online_teacher_trains_the_same_run(tmp_path, feature_store):
    cached = config(tmp_path, "cached", feature_store, epochs=1, feature_loss="at,rkd")
    online = config(tmp_path, "online", feature_store, epochs=1, feature_loss="at,rkd",
                    online_teacher="tests.feature_factories:conv_teacher", features=FEATURES)
    online.store = None
    train(cached, log=lambda *_: None)
    train(online, log=lambda *_: None)
    for a, b in zip(steps(tmp_path / "cached"), steps(tmp_path / "online"), strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("extra, needle", [
    (["--feature-loss", "at"], "--feature-loss needs --student-features NAME=LAYER"),
    (["--feature-loss", "crd", "--student-features", "s1=2"], "unknown feature loss 'crd'; known: at, fitnet"),
    (["--feature-loss", "at=x", "--student-features", "s1=2"], "the weight 'x' is not a number"),
    (["--feature-loss", "at", "--student-features", "zz=2"],
     "--student-features names 'zz', but the teacher's features are: s1 (attention 8x8), s2 (map 16x8x8)"),
    (["--feature-loss", "at", "--student-features", "s1=layer1"], "the student has no module 'layer1'"),
    (["--feature-loss", "fitnet", "--student-features", "s1=2"], "--feature-loss fitnet learns from map features"),
    (["--feature-loss", "at", "--student-features", "s1=2", "--mixup", "0.2"], "--mixup/--cutmix mix the inputs"),
    (["--feature-loss", "at", "--student-features", "s1=2", "--features", "s1=2"], "--features names the layers of"),
    (["--student-features", "s1=2"], "read by --feature-loss"),
    (["--feature-loss", "at", "--student-features", "s1=2", "--augment", "flip"], "would not line up"),
])
def test_bad_feature_training_input_is_one_line(tmp_path, feature_store, extra, needle):
    result = invoke("train", "--out", tmp_path / "r", "--student", STUDENT, "--dataset", "digits@val",
                    "--store", feature_store, "--loss", "kl", "--epochs", "1", "--no-progress", *extra)
    assert needle in one_error(result)


def test_a_store_without_features_is_one_line(tmp_path, digits_store):
    result = invoke("train", "--out", tmp_path / "r", "--student", STUDENT, "--dataset", "digits@train",
                    "--store", digits_store, "--feature-loss", "at", "--student-features", "s1=2", "--no-progress")
    assert "holds no features; dump it with --features" in one_error(result)


RECIPE_TEACHERS = {"cifar100_resnet56_resnet20": "resnet56", "cifar100_resnet56_resnet20_views": "resnet56",
                   "cifar100_resnet32x4_resnet8x4": "resnet32x4", "digits": "cnn:width=32"}


@pytest.mark.parametrize("name", sorted(RECIPE_TEACHERS))
def test_shipped_feature_students_fit_their_teachers(name):
    """Every feature student of a shipped recipe: its teacher's layers exist and reduce as named, its own
    layers exist, and every loss's connectors fit (the recipes cannot run here without CIFAR-100)."""
    from pathlib import Path

    from logitcache.features.distiller import FeatureDistiller
    from logitcache.features.extract import tap_teacher
    from logitcache.features.feature_specs import parse_feature_losses, parse_features, parse_student_features
    from logitcache.pipeline_plan import plan
    from logitcache.sources import get_model

    steps = plan(Path(__file__).resolve().parents[2] / "pipelines" / f"{name}.toml")
    students = {k: c for k, c in steps.students.items() if c.feature_loss}
    assert students, f"{name} has no feature student"
    sample = torch.rand(1, 8, 8) if name == "digits" else torch.rand(3, 32, 32)
    classes = 10 if name == "digits" else 100
    for config in students.values():
        teacher = get_model(RECIPE_TEACHERS[name], classes).eval()
        teacher(sample[None])  # sizes lazy layers
        _, records = tap_teacher(teacher, parse_features(config.features or steps.dumps["dump"].features), sample, "cpu")
        student = get_model(config.student, classes)
        student.eval()(sample[None])
        FeatureDistiller(student, parse_student_features(config.student_features), {r["name"]: r for r in records},
                         parse_feature_losses(config.feature_loss), sample, "cpu")
