"""A model scheme is a plugin: registered here, by this test module alone, it dumps, trains and is
in the help, and no logitcache file names it."""

import pytest
from torch import nn

from logitcache.errors import SpecError
from logitcache.sources import (
    get_model,
    list_model_schemes,
    model_transform,
    register_model_scheme,
    weights_in_spec,
)
from logitcache.store import open_store
from tests.conftest import invoke

ZOO = {"tiny": lambda num_classes: nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))}


@register_model_scheme("zoo", grammar="zoo:NAME", description="a model from the test zoo")
def zoo_model(rest: str, num_classes: int):
    if rest not in ZOO:
        raise SpecError(f"no model {rest!r} in the zoo; it has {', '.join(ZOO)}")
    return ZOO[rest](num_classes)


def test_a_scheme_registered_outside_logitcache_is_a_model_spec():
    assert "zoo" in list_model_schemes()
    assert get_model("zoo:tiny", 3)[1].out_features == 3
    assert model_transform("zoo:tiny") is None and weights_in_spec("zoo:tiny") is None
    with pytest.raises(SpecError, match="no model 'lion' in the zoo"):
        get_model("zoo:lion", 3)


def test_a_plugin_scheme_dumps_trains_and_is_in_the_help(tmp_path):
    store = tmp_path / "zoo.zarr"
    result = invoke("dump", store, "--teacher", "zoo:tiny", "--dataset", "digits@train", "--rows-per-shard", 512,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    teacher = open_store(store).teacher()
    assert teacher.is_complete and teacher.attrs["provenance"]["teacher"]["spec"] == "zoo:tiny"
    result = invoke("train", "--out", tmp_path / "run", "--student", "zoo:tiny", "--dataset", "digits@train",
                    "--store", store, "--loss", "kl", "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    help_text = " ".join(invoke("dump", "--help").output.split())
    assert "zoo:NAME, a model from the test zoo" in help_text
