"""Tokenise-and-pack at corpus scale: the streamed token datasets against main's in-memory ones,
and a token dump killed and resumed. Nothing is downloaded; the corpus is generated and the BPE
tokenizer trained here.

    $ git archive f8b1fc8 | (mkdir -p /tmp/lc_main && tar -x -C /tmp/lc_main)      # main, before
    $ python benchmarks/token_stream.py corpus /tmp/lc_corpus --tokens 100e6         # text files
    $ python benchmarks/token_stream.py bpe /tmp/lc_corpus /tmp/lc_bpe               # a BPE tokenizer
    $ python benchmarks/token_stream.py pack "text:/tmp/lc_corpus/*.txt" bytes --baseline /tmp/lc_main
    $ python benchmarks/token_stream.py resume "text:/tmp/lc_corpus/00[0-1]*.txt" bytes /tmp/lc_resume
    $ python benchmarks/token_stream.py verify /tmp/lc_bench_store.zarr --baseline /tmp/lc_main   # after ``pack``
    $ python benchmarks/token_stream.py read /tmp/lc_bench_store.zarr --baseline /tmp/lc_main --budget 64e6
    $ PROGRESS_SECONDS=2 python benchmarks/token_stream.py store-resume "text:/tmp/lc_corpus/*.txt" bytes /tmp/lc_resumed.zarr

``pack`` runs each configuration in a fresh process and prints its peak RSS (``ru_maxrss``) and
tokens/s: ``stream`` (this checkout: every row cut, none kept), ``store`` (this checkout: the rows
written into a token store, as a dump does) and ``main`` (the baseline checkout's
``get_token_dataset``, every row in memory). Run ``main`` under ``prlimit`` and ``flock
/tmp/bigmem.lock``: it holds the corpus several times over. ``resume`` dumps a corpus slice with a
tiny seeded ``gpt`` teacher, kills a second dump after its second shard (and a third while it writes
the token arrays), reruns both and checks all three stores are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 2048


def make_corpus(directory: Path, tokens: float, files: int, seed: int = 0) -> None:
    """Random words of a fixed 5,000-word vocabulary, seeded: ``tokens`` bytes of text in ``files`` files."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    words = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)])
    directory.mkdir(parents=True, exist_ok=True)
    per_file = int(tokens) // files
    for index in range(files):
        picked = words[rng.zipf(1.2, per_file // 5) % len(words)]
        text = " ".join(picked.tolist())
        lines = [text[i: i + 120] for i in range(0, len(text), 120)]
        (directory / f"{index:04d}.txt").write_text("\n".join(lines)[:per_file] + "\n", encoding="utf-8")


def train_bpe(corpus: Path, directory: Path, vocab_size: int = 8192) -> None:
    """A byte-level BPE trained on the first files of the corpus, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    files = sorted(str(p) for p in corpus.glob("*.txt"))[:4]
    raw.train(files, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(str(directory))


def child(mode: str, spec: str, tokenizer_spec: str, out: str) -> None:
    """One configuration, in this process: prints a JSON line (imports are not timed)."""
    if mode == "verify":
        return verify_child(out)
    if mode.startswith("read"):
        return read_child(out, int(float(mode.split(":")[1])))
    from logitcache.sources import get_token_dataset, get_tokenizer

    tokenizer = get_tokenizer(tokenizer_spec)
    started, extra = time.perf_counter(), {}
    if mode == "main":
        source = get_token_dataset(spec, tokenizer, SEQ_LEN)
        rows, tokens = len(source.keys), int(source.lengths.sum())
    elif mode == "stream":
        from logitcache.sources.token_datasets import stream_token_dataset

        rows = tokens = 0
        for block in stream_token_dataset(spec, tokenizer, SEQ_LEN):
            rows, tokens = rows + len(block), tokens + int(block.lengths.sum())
    else:
        from logitcache.sources.token_datasets import stream_token_dataset
        from logitcache.store import is_unfinished_creation
        from logitcache.store._root import create_streamed_token_store

        import logitcache.store._token_writes as writes

        writes.PROGRESS_SECONDS = float(os.environ.get("PROGRESS_SECONDS", writes.PROGRESS_SECONDS))
        resume = mode == "store-resume" and is_unfinished_creation(out)
        sys.path.insert(0, str(REPO))  # every write into the tokens array counted; with store-kill:K,
        from tests.killpoints import _install  # os._exit right after the K-th

        os.environ["KILLPOINTS_KEY"] = "tokens/c/"
        token_writes = _install(int(mode.split(":")[1]) if mode.startswith("store-kill:") else 0)
        if not resume:
            shutil.rmtree(out, ignore_errors=True)
        stream = stream_token_dataset(spec, tokenizer, SEQ_LEN)
        store = create_streamed_token_store(out, stream, vocab_size=tokenizer.vocab_size, resume=resume,
                                            tokenizer=tokenizer.describe(), describe=lambda: stream.description)
        rows, tokens = store.num_samples, int(store.dataset["num_tokens"])
        extra = {"token_writes": token_writes[0]}
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode + (" (resumed)" if mode == "store-resume" and resume else ""), "rows": rows,
                      "tokens": tokens, "seconds": round(seconds, 2),
                      "tokens_per_s": round(tokens / seconds), "peak_rss_mib": round(peak), **extra}))


def pack(spec: str, tokenizer_spec: str, baseline: str | None, modes: list[str]) -> None:
    """Each mode in a fresh process; main's from the baseline checkout."""
    for mode in modes:
        root = baseline if mode == "main" else str(REPO)
        command = [sys.executable, str(Path(__file__).resolve()), "child", mode, spec, tokenizer_spec,
                   "/tmp/lc_bench_store.zarr"]
        result = subprocess.run(command, cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True,
                                text=True)
        line = result.stdout.strip().splitlines()[-1] if result.returncode == 0 else \
            f"failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}"
        print(f"{tokenizer_spec:>12} {mode:>6}: {line}", flush=True)


def store_resume(spec: str, tokenizer_spec: str, out: str, kill: int | None) -> None:
    """Token arrays written whole; then written again, killed after ``kill`` writes into the tokens
    array (default: half of the whole run's) and resumed (this checkout; main's resume is the whole
    creation again); same bytes?"""
    sys.path.insert(0, str(REPO))
    from tests.conftest import store_contents

    env, whole = {**os.environ, "PYTHONPATH": str(REPO)}, {}
    for mode, where in (("store", out + ".whole"), ("store-kill", out), ("store-resume", out)):
        if mode == "store-kill":
            mode = f"store-kill:{kill or max(1, whole['token_writes'] // 2)}"
        command = [sys.executable, str(Path(__file__).resolve()), "child", mode, spec, tokenizer_spec, where]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        line = result.stdout.strip().splitlines()[-1] if result.returncode == 0 else f"exit {result.returncode}"
        if mode == "store":
            whole.update(json.loads(line))
        print(f"{mode:>14}: {line}", flush=True)
    print("byte-identical to the uninterrupted one:", store_contents(Path(out)) == store_contents(Path(out + ".whole")))


def verify_child(location: str) -> None:
    """``verify_store`` of a token store, in this process: its peak RSS over the imports'."""
    from logitcache.store import open_store, verify_store

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    report = verify_store(location)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = int(open_store(location).dataset["num_tokens"])
    print(json.dumps({"mode": "verify", "tokens": tokens, "seconds": round(seconds, 2),
                      "checked": report.checked[0][:40], "imports_rss_mib": round(before),
                      "peak_rss_mib": round(peak), "over_imports_mib": round(peak - before)}))


def read_child(location: str, budget: int, batches: int = 200, batch_size: int = 8) -> None:
    """A label-only ``TokenStoreDataset`` of a token store at a cache budget, ``batches`` batches
    taken in the epoch order a trainer would use: peak RSS over the imports'."""
    import numpy as np

    from logitcache.lm import TokenStoreDataset
    from logitcache.train.sampler import EpochSampler

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    data = TokenStoreDataset(location, targets=False, cache_budget=budget)
    opened = time.perf_counter() - started
    order = EpochSampler(np.arange(len(data)), 0, block_rows=getattr(data, "block_sequences", None),
                         window_blocks=getattr(data, "window_blocks", 1)).order()
    tokens = 0
    for step in range(batches):
        tokens += int(data.batch(order[step * batch_size:(step + 1) * batch_size])["attention_mask"].sum())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = getattr(data, "rows", None)
    mode = "in memory" if rows is None or rows.in_memory else f"window of {rows.window_blocks} chunks"
    print(json.dumps({"mode": mode, "budget": budget, "open_s": round(opened, 2), "seconds": round(seconds, 2),
                      "batch_tokens_per_s": round(tokens / (seconds - opened)), "imports_rss_mib": round(before),
                      "peak_rss_mib": round(peak), "over_imports_mib": round(peak - before)}))


def verify(location: str, baseline: str | None, mode: str = "verify") -> None:
    """``verify_store`` (or a ``read:BUDGET``) of one store by this checkout and the baseline's, each in
    a fresh process."""
    for root in ([baseline] if baseline else []) + [str(REPO)]:
        command = [sys.executable, str(Path(__file__).resolve()), "child", mode, "-", "-", location]
        result = subprocess.run(command, cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True,
                                text=True)
        line = result.stdout.strip().splitlines()[-1] if result.returncode == 0 else \
            f"failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}"
        print(f"{'baseline' if root == baseline else 'this':>8}: {line}", flush=True)


def resume(spec: str, tokenizer_spec: str, work: Path) -> None:
    """An uninterrupted dump, one killed after its second shard and one killed while writing the
    token arrays; both rerun; all three stores byte-identical."""
    import torch

    sys.path.insert(0, str(REPO))
    from logitcache.sources import get_model, get_tokenizer
    from tests.conftest import store_contents

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    weights = work / "gpt.pt"
    torch.manual_seed(0)
    model = get_model("gpt:n_layer=1,n_head=2,n_embd=32,block_size=256", get_tokenizer(tokenizer_spec).vocab_size)
    torch.save(model.state_dict(), weights)

    def dump(store: Path, kill: int = 0, key: str = ""):
        args = ["dump", str(store), "--teacher", "gpt:n_layer=1,n_head=2,n_embd=32,block_size=256", "--weights",
                str(weights), "--dataset", spec, "--tokenizer", tokenizer_spec, "--seq-len", "256",
                "--codec", "topk:8", "--rows-per-shard", str(256 * 256), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "KILLPOINTS_KEY": key}
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "tests.killpoints", str(kill), *args], cwd=REPO, env=env,
                                capture_output=True, text=True)
        return result.returncode, time.perf_counter() - started, result.stdout.strip().splitlines()[-1:]

    print("uninterrupted:", dump(work / "whole.zarr"), flush=True)
    print("killed after shard 2:", dump(work / "killed.zarr", 2, "shard_done/c/")[:2], flush=True)
    print("resumed:", dump(work / "killed.zarr"), flush=True)
    print("killed after its first token chunk:", dump(work / "early.zarr", 1, "tokens/c/")[:2], flush=True)
    print("rerun:", dump(work / "early.zarr"), flush=True)
    whole = store_contents(work / "whole.zarr")
    digest = hashlib.sha256(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in whole.items()}).encode())
    for name in ("killed", "early"):
        same = store_contents(work / f"{name}.zarr") == whole
        print(f"{name}.zarr byte-identical to whole.zarr ({len(whole)} files, {digest.hexdigest()[:12]}): {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    corpus = commands.add_parser("corpus")
    corpus.add_argument("directory", type=Path)
    corpus.add_argument("--tokens", type=float, default=100e6)
    corpus.add_argument("--files", type=int, default=100)
    bpe = commands.add_parser("bpe")
    bpe.add_argument("corpus", type=Path)
    bpe.add_argument("directory", type=Path)
    measure = commands.add_parser("pack")
    measure.add_argument("spec")
    measure.add_argument("tokenizer")
    measure.add_argument("--baseline")
    measure.add_argument("--modes", default="stream,store,main")
    one = commands.add_parser("child")
    for name in ("mode", "spec", "tokenizer", "out"):
        one.add_argument(name)
    again = commands.add_parser("resume")
    again.add_argument("spec")
    again.add_argument("tokenizer")
    again.add_argument("work", type=Path)
    check = commands.add_parser("verify")
    check.add_argument("store")
    check.add_argument("--baseline")
    again_store = commands.add_parser("store-resume")
    for name in ("spec", "tokenizer", "out"):
        again_store.add_argument(name)
    again_store.add_argument("--kill", type=int)
    read = commands.add_parser("read")
    read.add_argument("store")
    read.add_argument("--baseline")
    read.add_argument("--budget", default="64e6")
    args = parser.parse_args()
    if args.command == "corpus":
        make_corpus(args.directory, args.tokens, args.files)
    elif args.command == "bpe":
        train_bpe(args.corpus, args.directory)
    elif args.command == "pack":
        pack(args.spec, args.tokenizer, args.baseline, args.modes.split(","))
    elif args.command == "verify":
        verify(args.store, args.baseline)
    elif args.command == "store-resume":
        store_resume(args.spec, args.tokenizer, args.out, args.kill)
    elif args.command == "read":
        verify(args.store, args.baseline, f"read:{args.budget}")
    elif args.command == "child":
        child(args.mode, args.spec, args.tokenizer, args.out)
    else:
        resume(args.spec, args.tokenizer, args.work)


if __name__ == "__main__":
    main()
