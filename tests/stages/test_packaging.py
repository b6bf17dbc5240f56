"""The install resolves at once: every requirement has an upper bound, so pip never walks back
over older releases (it once spent 8 minutes and 8.7 GB of torch wheels doing so)."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = [("dependencies", Requirement(text)) for text in project["dependencies"]]
    for extra, texts in project["optional-dependencies"].items():
        found += [(f"extra {extra}", Requirement(text)) for text in texts]
    return found


def test_every_requirement_is_bounded_above():
    unbounded = [f"{where}: {req}" for where, req in requirements()
                 if not any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier)]
    assert unbounded == []


def test_torch_stays_on_the_release_this_machine_installs_from_disk():
    torch = [req for _, req in requirements() if req.name == "torch"]
    assert torch and all(req.specifier.contains("2.14.1") and not req.specifier.contains("2.15.0") for req in torch)


def test_the_dev_extra_pins_the_s3_chain_to_one_consistent_set():
    pins = {req.name: str(req.specifier) for where, req in requirements() if where == "extra dev"}
    assert pins["botocore"] == pins["boto3"]  # boto3 x.y.z needs botocore >= x.y.z of the same minor
    assert all(pins[name].startswith("==") for name in ("s3fs", "aiobotocore", "botocore", "boto3"))
