"""Four reader processes use a store while another team dumps a second teacher into it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from logitcache.store import open_store, verify_store
from logitcache.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

WATCHER = textwrap.dedent("""
    import json, sys, time
    from logitcache.store import open_store, verify_store
    store_path = sys.argv[1]
    seen = {"checks": 0, "writing_seen": 0, "early": 0, "default_ok": True, "second_complete_ok": None}
    deadline = time.time() + 240
    print("ready", flush=True)
    while time.time() < deadline:
        store = open_store(store_path)
        complete, every = store.teacher_names, store.all_teacher_names
        if "second" in every and "second" not in complete:
            seen["writing_seen"] += 1
        if "second" in complete and not store.teacher("second").is_complete:
            seen["early"] += 1
        seen["default_ok"] &= verify_store(store_path, teachers=["default"]).ok
        seen["checks"] += 1
        if "second" in complete:
            seen["second_complete_ok"] = verify_store(store_path, teachers=["second"]).ok
            break
        time.sleep(0.05)
    print(json.dumps(seen))
""")


def test_readers_are_undisturbed_and_the_new_teacher_appears_only_when_complete(tmp_path, digits_store):
    store = tmp_path / "shared.zarr"
    shutil.copytree(digits_store, store)
    default_before = open_store(store).teacher("default").read(0, 1437)
    watchers = [subprocess.Popen([sys.executable, "-c", WATCHER, str(store)], cwd=REPO, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for watcher in watchers:  # both are watching before the second teacher's dump begins
        assert watcher.stdout.readline().strip() == "ready", watcher.stderr.read()
    dump = subprocess.Popen(
        [sys.executable, "-m", "logitcache", "dump", str(store), "--teacher", "tests.factories:slow_teacher",
         "--teacher-name", "second", "--dataset", "digits@train", "--codec", "u8", "--rows-per-shard", "128",
         "--batch-size", "64", "--no-progress"],
        cwd=REPO, env={**ENV, "LOGITCACHE_TEST_SLEEP": "0.2"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainers = [
        subprocess.Popen([sys.executable, "-m", "logitcache", "train", "--out", str(tmp_path / f"run{i}"),
                          "--student", "mlp:hidden=8", "--dataset", "digits@train", "--store", str(store),
                          "--teacher", "default", "--loss", "kl", "--epochs", "2", "--no-progress"],
                         cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    readers = watchers + trainers
    outputs = [reader.communicate(timeout=300) for reader in readers]
    _, dump_err = dump.communicate(timeout=300)
    assert dump.returncode == 0, dump_err
    assert all(reader.returncode == 0 for reader in readers), outputs

    for stdout, _ in outputs[:2]:
        seen = json.loads(stdout.strip().splitlines()[-1])
        assert seen["default_ok"] and seen["early"] == 0 and seen["second_complete_ok"] is True, seen
        assert seen["writing_seen"] > 0, seen  # it did watch the dump in progress
    train(TrainConfig(out=str(tmp_path / "alone"), student="mlp:hidden=8", dataset="digits@train",
                      store=str(digits_store), loss="kl", epochs=2, progress=False), log=lambda *_: None)
    for i in range(2):
        assert (tmp_path / f"run{i}" / "steps.csv").read_text() == (tmp_path / "alone" / "steps.csv").read_text()
    assert (open_store(store).teacher("default").read(0, 1437) == default_before).all()
    assert open_store(store).teacher_names == ["default", "second"] and verify_store(store).ok
