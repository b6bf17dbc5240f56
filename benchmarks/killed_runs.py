"""Why the crash tests fork their killed runs: CPU seconds per killed dump in a fresh interpreter
(most of it importing torch, zarr, sklearn, logitcache) against one forked from the warm
``tests.killpoints`` server. CPU, not wall time, so a loaded machine still gives a fair ratio.

    PYTHONPATH=$PWD python -m benchmarks.killed_runs [--runs 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile

from tests import killpoints

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def dump_args(store: str) -> list[str]:
    return ["dump", store, "--teacher", "tests.factories:linear_teacher", "--dataset", "digits@train",
            "--rows-per-shard", "512", "--no-progress"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    runs = parser.parse_args().runs
    folder = tempfile.mkdtemp()
    fresh, forked = [], []
    for k in range(runs):
        before = children_cpu()
        done = subprocess.run([sys.executable, "-m", "tests.killpoints", str(k % 11 + 1),
                               *dump_args(f"{folder}/fresh{k}.zarr")], env=ENV, cwd=killpoints.REPO,
                              capture_output=True, text=True)
        fresh.append(children_cpu() - before)
        assert done.returncode == 137, done.stderr
    killpoints.run(0, dump_args(f"{folder}/warm.zarr"), env=ENV)  # the server's one import, not counted
    for k in range(runs):
        done = killpoints.run(k % 11 + 1, dump_args(f"{folder}/forked{k}.zarr"), env=ENV)
        forked.append(done.cpu_seconds)
        assert done.returncode == 137, done.stderr
    for name, seconds in (("fresh interpreter", fresh), ("forked from the server", forked)):
        print(f"{name}: {sum(seconds) / runs:.2f} CPU s a killed run (min {min(seconds):.2f}, max {max(seconds):.2f})")


if __name__ == "__main__":
    main()
