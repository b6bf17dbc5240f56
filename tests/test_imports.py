"""``import logitcache`` and ``logitcache --help`` stay light: no torch, no zarr."""

import subprocess
import sys


def test_import_is_light():
    code = "import sys, logitcache, logitcache.cli; print(sorted(m for m in ('torch', 'zarr', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "logitcache", "--help"], capture_output=True, text=True, check=True)
    for verb in ("dump", "info", "verify", "train", "run"):
        assert verb in out.stdout
