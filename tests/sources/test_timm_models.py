"""timm models by spec (issue 14, item 1): real timm architectures built offline, weights from local
files both ways, and the model's data config as the dump's default transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from logitcache.errors import ModelError, SpecError
from logitcache.sources import get_dataset, get_model, model_transform
from logitcache.sources.transforms import build_transform
from tests.conftest import invoke, one_error
from tests.factories import write_image_folder

timm = pytest.importorskip("timm", reason="the timm extra (and dev) installs timm")


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """A test_vit with 3 classes, its weights saved as a state dict; and its outputs on fixed inputs."""
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    path = tmp_path_factory.mktemp("timm") / "test_vit.pth"
    torch.save(model.state_dict(), path)
    inputs = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        return path, inputs, model(inputs)


def test_a_timm_model_loads_local_weights_with_weights_or_pretrained_file(vit_weights):
    path, inputs, expected = vit_weights
    for model in (get_model("timm:test_vit", 3, weights=str(path)),
                  get_model(f"timm:test_vit:pretrained_file={path}", 3)):
        with torch.no_grad():
            assert torch.equal(model.eval()(inputs), expected)
    with torch.no_grad():
        assert not torch.equal(get_model("timm:test_vit", 3).eval()(inputs), expected)  # nothing downloaded
    # a head of another size is an error, not a silently re-initialised classifier
    with pytest.raises(ModelError, match="does not fit timm model 'test_vit'"):
        get_model(f"timm:test_vit:pretrained_file={path}", 5)
    model = get_model("timm:test_resnet:drop_rate=0.25", 4)  # any create_model argument
    assert model.drop_rate == 0.25 and model.num_classes == 4


@pytest.mark.parametrize("spec, error, says", [
    ("timm:resnet10", SpecError, "unknown timm model 'resnet10'; did you mean"),
    ("timm:test_vit:num_classes=4", SpecError, "num_classes is set by logitcache"),
    ("timm:test_vit:checkpoint_path=/w.pth", SpecError, "checkpoint_path is set by logitcache"),
    ("timm:test_vit:pretrained_file=/nonexistent.pth", ModelError, "pretrained_file /nonexistent.pth does not exist"),
])
def test_bad_timm_specs(spec, error, says):
    with pytest.raises(error, match=says):
        get_model(spec, 3)


@pytest.mark.parametrize("name", ["test_vit", "resnet10t"])
def test_the_data_config_becomes_the_transform_timm_builds(name):
    """The steps logitcache records are timm's eval transform: the same tensor, bit for bit."""
    from timm.data import create_transform, resolve_model_data_config

    steps = model_transform(f"timm:{name}")
    assert steps.startswith("resize=") and ":bicubic" in steps and ",to_tensor,normalize=" in steps
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 241, 3), dtype=np.uint8))
    theirs = create_transform(**resolve_model_data_config(timm.create_model(name, pretrained=False)))
    assert torch.equal(build_transform(steps)(image), theirs(image))
    assert model_transform("resnet20") is None and model_transform("torchvision:resnet18") is None


def test_a_timm_teacher_dump_uses_its_data_config_and_names_its_weights(tmp_path, vit_weights):
    path = vit_weights[0]
    write_image_folder(tmp_path / "pets", classes=3, per_class=2, size=40)
    teacher = f"timm:test_vit:pretrained_file={path}"
    result = invoke("dump", tmp_path / "s.zarr", "--teacher", teacher, "--dataset", f"imagefolder:{tmp_path / 'pets'}",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    steps = model_transform("timm:test_vit")
    assert f"inputs: {steps} (the teacher's data config" in result.output
    from logitcache.sources import file_sha256
    from logitcache.store import open_store

    attrs = open_store(tmp_path / "s.zarr").teacher().attrs
    assert attrs["settings"]["transform"] == steps and attrs["settings"]["weights_sha256"] == file_sha256(path)
    assert attrs["provenance"]["software"]["timm"] == timm.__version__
    # the dataset's own default stays for datasets that are not images, and --transform still wins
    assert get_dataset("digits", default_transform=steps).transform == "none"
    given = get_dataset(f"imagefolder:{tmp_path / 'pets'}", transform="tensor", default_transform=steps)
    assert given.transform == "to_tensor"


def test_a_timm_student_trains_and_its_checkpoint_rebuilds(tmp_path):
    write_image_folder(tmp_path / "pets", classes=2, per_class=2, size=16)
    dataset = f"imagefolder:{tmp_path / 'pets'}"
    result = invoke("train", "--out", tmp_path / "run", "--student", "timm:test_resnet", "--dataset", dataset,
                    "--transform", "resize=16,center_crop=16,to_tensor", "--epochs", "1", "--batch-size", "4",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    model = get_model(f"checkpoint:{tmp_path / 'run' / 'last.pt'}", 2)
    assert type(model).__name__ == "ResNet"


def test_a_missing_timm_package_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    error = one_error(invoke("dump", tmp_path / "s.zarr", "--teacher", "timm:resnet50", "--dataset", "digits"))
    assert "pip install 'logitcache[timm]'" in error
