"""Sources by spec on real (generated) files: registries, datasets, models, weights, transforms."""

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from logitcache.errors import DatasetError, ModelError, SpecError
from logitcache.registry import About, Registry
from logitcache.sources import (
    get_dataset,
    get_model,
    list_datasets,
    list_model_schemes,
    list_models,
    lm_context_length,
    load_weights,
    parse_spec,
)
from logitcache.sources._registry import DATASETS, MODEL_SCHEMES, TOKEN_DATASETS, TOKENIZERS
from logitcache.sources.transforms import build_transform, canonical, is_random


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_outputs_logits(name):
    model = get_model(name, num_classes=7).eval()
    language_model = lm_context_length(model) is not None  # takes token ids (B, T), gives logits (B, T, V)
    with torch.no_grad():
        out = model(torch.randint(0, 7, (2, 5)) if language_model else torch.randn(2, 3, 32, 32))
    assert out.shape == ((2, 5, 7) if language_model else (2, 7))


def test_registry_refuses_duplicates_and_lists_names_on_unknown():
    registry = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: 2)
    with pytest.raises(SpecError, match="unknown thing 'b'; known: a"):
        registry.get("b")


def test_registry_entries_say_how_specs_write_them():
    registry = Registry("thing")
    registry.register("a", grammar="a:PATH", description="an a")(lambda: 1)
    registry.register("b")(lambda: 2)
    assert registry.about("a") == About("a:PATH", "an a") and registry.about("b") == About("b", "")
    with pytest.raises(SpecError, match="unknown thing 'c'; known: a, b"):
        registry.about("c")


@pytest.mark.parametrize("registry", [MODEL_SCHEMES, DATASETS, TOKEN_DATASETS, TOKENIZERS], ids=lambda r: r.kind)
def test_every_scheme_says_its_grammar_and_what_it_is(registry):
    """What the CLI's help lists for each (tests/stages/test_cli.py checks the help lists them all)."""
    for name in registry.names():
        about = registry.about(name)
        assert about.grammar.partition(":")[0].partition("[")[0] == name and about.description, (name, about)


def test_builtin_model_schemes():
    """Each registered by the module that builds it (tests/sources/test_scheme_plugins.py adds one from outside)."""
    builtin = {name: MODEL_SCHEMES.get(name).build.__module__ for name in list_model_schemes()
               if MODEL_SCHEMES.get(name).build.__module__.startswith("logitcache.")}
    assert builtin == {"checkpoint": "logitcache.sources.checkpoints", "export": "logitcache.sources.saved_programs",
                       "hf": "logitcache.sources.hf_models", "hf-config": "logitcache.sources.hf_models",
                       "timm": "logitcache.sources.timm_models", "torchscript": "logitcache.sources.saved_programs",
                       "torchvision": "logitcache.sources.torchvision_models"}


def test_builtin_dataset_names():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "hf", "imagefolder", "imagenet", "mnist", "parquet"]


def test_spec_parsing():
    assert parse_spec("cifar100:/d/x@test") == ("cifar100", "/d/x", "test")
    assert parse_spec("imagefolder:/a@b/c") == ("imagefolder", "/a@b/c", None)
    assert parse_spec("digits", split="val") == ("digits", "", "val")
    with pytest.raises(SpecError, match="names split 'val' but --split is 'train'"):
        parse_spec("digits@val", split="train")


def test_digits_splits_are_disjoint_and_cover_everything():
    train, val, every = (get_dataset(f"digits@{s}") for s in ("train", "val", "all"))
    assert len(train) == 1437 and len(val) == 360 and len(every) == 1797
    assert not set(train.keys) & set(val.keys) and set(train.keys) | set(val.keys) == set(every.keys)
    image, label = train.dataset[0]
    assert image.shape == (1, 8, 8) and 0 <= image.min() and image.max() <= 1 and label == train.labels[0]


def make_image_folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_imagefolder_keys_are_sorted_relative_paths(tmp_path):
    make_image_folder(tmp_path / "pets" / "val")
    source = get_dataset(f"imagefolder:{tmp_path / 'pets'}@val", transform="resize=8,center_crop=8,to_tensor")
    assert source.keys == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert list(source.labels) == [0, 0, 0, 1, 1, 1] and source.classes == ["cat", "dog"]
    assert source.dataset[4][0].shape == (3, 8, 8)
    assert source.transform == "resize=8,center_crop=8,to_tensor"


def test_imagefolder_default_transform_is_imagenet_eval(tmp_path):
    make_image_folder(tmp_path / "pets")
    source = get_dataset(f"imagefolder:{tmp_path / 'pets'}")
    assert source.transform == canonical("imagenet") and source.dataset[0][0].shape == (3, 224, 224)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        get_dataset(f"imagefolder:{tmp_path}/missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        get_dataset(f"imagefolder:{tmp_path}/empty")
    with pytest.raises(SpecError, match="needs a location"):
        get_dataset("imagefolder")


def write_mnist(root, n=5):
    """MNIST's own idx format, as torchvision reads it from MNIST/raw."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n)):
        images = rng.integers(0, 255, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def test_mnist_from_a_local_root(tmp_path):
    write_mnist(tmp_path)
    source = get_dataset(f"mnist:{tmp_path}@test")
    assert source.keys == [f"test/{i:05d}" for i in range(5)] and list(source.labels) == [0, 1, 2, 3, 4]
    image, _ = source.dataset[0]
    assert image.shape == (1, 28, 28) and source.transform == "to_tensor,normalize=mnist"


def test_torchvision_dataset_missing_files(tmp_path):
    for name in ("cifar10", "cifar100", "mnist", "imagenet"):
        with pytest.raises(DatasetError, match=f"{name} data not found under"):
            get_dataset(f"{name}:{tmp_path}")
        with pytest.raises(DatasetError, match="does not exist"):
            get_dataset(f"{name}:{tmp_path}/nowhere")


def test_factory_dataset_keys_and_labels():
    source = get_dataset("tests.factories:shuffled_digits")
    assert len(source) == 1437 and source.keys != sorted(source.keys) and source.transform == "factory"


def test_transforms():
    assert canonical("cifar100") == "to_tensor,normalize=cifar100"
    assert is_random("random_crop=32:4,flip,to_tensor") and not is_random("imagenet")
    assert build_transform("none") is None
    with pytest.raises(SpecError, match="unknown transform step 'blur'"):
        build_transform("blur=3")
    with pytest.raises(SpecError, match="positive integer"):
        build_transform("resize=-1")
    with pytest.raises(SpecError, match="normalize takes one of"):
        build_transform("normalize=svhn")


def test_weights_round_trip_and_prefix_stripping(tmp_path):
    model = get_model("resnet8", num_classes=5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    other = get_model("resnet8", num_classes=5, weights=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    with pytest.raises(ModelError, match="do not fit the model"):
        load_weights(get_model("resnet8", num_classes=7), str(path))


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": object()}, path)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_weights(get_model("mlp", 2), str(path))


def test_torchscript_and_factory_models(tmp_path):
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    scripted.save(str(tmp_path / "t.pt"))
    model = get_model(f"torchscript:{tmp_path / 't.pt'}", 10)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert get_model("tests.factories:linear_teacher", 4)(torch.zeros(1, 64)).shape == (1, 4)
    with pytest.raises(ModelError, match="not a TorchScript module"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        get_model(f"torchscript:{tmp_path / 'junk.pt'}", 10)


def test_exported_program_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    loaded = get_model(f"export:{tmp_path / 't.pt2'}", 10)
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(loaded(x), model(x))
    with pytest.raises(ModelError, match="not a torch.export program"):
        (tmp_path / "junk.pt2").write_bytes(b"junk")
        get_model(f"export:{tmp_path / 'junk.pt2'}", 10)


def test_model_spec_arguments():
    assert get_model("mlp:hidden=7,depth=2", 3)[3].in_features == 7
    with pytest.raises(SpecError, match="not of the form name=value"):
        get_model("mlp:7", 3)


TOP_LEVEL = '''
import torch
from torch import nn


class Tiny(torch.utils.data.Dataset):
    classes = ["a", "b"]

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.full((1, 8, 8), float(index)), index % 2


def build(split=None):
    return Tiny(split)


def net(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
'''


def test_top_level_modules_in_specs_are_found_here(tmp_path, monkeypatch):
    """``mydata:build`` with mydata.py in the current directory, as entry points and uvicorn take it
    (the console script's sys.path holds its bin directory, not the one it runs in)."""
    import os
    import sys

    name = f"topdata_{tmp_path.name}"  # a module per test run: sys.modules keeps modules once imported
    (tmp_path / f"{name}.py").write_text(TOP_LEVEL)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and os.path.abspath(p) != str(tmp_path)])
    monkeypatch.chdir(tmp_path)
    source = get_dataset(f"{name}:build@train")
    assert source.keys == ["train/0", "train/1", "train/2", "train/3"] and source.classes == ["a", "b"]
    assert get_model(f"{name}:net", 2)(torch.zeros(1, 1, 8, 8)).shape == (1, 2)


@pytest.mark.parametrize("kind, spec", [("dataset", "nosuchmodule:build"), ("model", "nosuchmodule:net"),
                                        ("dataset", "imagefoldr:/data/pets")])
def test_an_unknown_name_with_a_colon_says_both_were_tried(kind, spec):
    with pytest.raises(SpecError) as caught:
        get_dataset(spec) if kind == "dataset" else get_model(spec, 2)
    message = str(caught.value)
    module = spec.partition(":")[0]
    assert f"{module!r} is neither a registered {kind} (known: " in message
    assert f"nor a module Python can import (cannot import {module!r}" in message
    assert "current directory" in message


def test_a_module_whose_own_import_is_missing_names_that_import(tmp_path, monkeypatch):
    name = f"needs_missing_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text("import surely_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError, match=f"cannot import '{name}' .ModuleNotFoundError: No module named "
                                        "'surely_not_installed_xyz'"):
        get_dataset(f"{name}:build")


def test_an_unsafe_pickle_is_named_and_never_advised_to_be_loaded_unsafely(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, ("echo ran",)

    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(ModelError) as refused:
        load_weights(get_model("mlp", 2), str(path))
    message = str(refused.value)
    assert "not a plain state dict of tensors (it asks for posix.system)" in message
    assert "weights_only=False" not in message and "will likely succeed" not in message
