"""Token stores for language models (issue 12, "Measure"): bytes per token and the KD-loss error a
student would see, for logitcache's ``topk:K`` and ``sample:K`` next to the published layouts of
DistillKit, Megatron-LM's offline KD, NeMo-Aligner and RS-KD; dump throughput against the bare
teacher forward; and the dump's peak host memory as the vocabulary grows.

    python -m benchmarks.lm_store [--work DIR] [--rounds 3] [--threads 1] [--skip-throughput] [--skip-memory]

Everything is made here, offline, in one run: a byte-level BPE tokenizer (``tokenizers``) trained on
the four Shakespeare plays in data/text, a small GPT teacher trained on their train split (fixed
steps, seeded), a smaller GPT student trained briefly, then real ``logitcache dump`` runs
(``--tokenizer hf:DIR --seq-len 256``) of the teacher over the held-out val split.

Bytes are per real token of the whole dumped val split (logitcache: what ``info`` reports, the
teacher's arrays with their shard indexes; the anchors: the files their writers would make). Errors
are measured at the target positions of ``--eval-sequences`` evenly spread val sequences, for two
students (a smaller GPT trained briefly, and the same GPT after a sixth of its steps). With p the
teacher's dense distribution and q the student's (T=1), the exact loss is KL(p || q) and its gradient
with respect to the student's logits q - p. Each layout's loss is what its own trainer computes from
its stored targets (logitcache's ``losses.topk_token_kl`` / ``sampled_token_kl``, what its LM
trainer uses; the anchors' losses as their code computes them, rebuilt below). Per position: "bias"
is the mean of (stored loss - exact loss) with its standard error, "std" and "rmse" its spread,
"logit-grad err" the relative RMS error of the gradient w.r.t. the logits, sqrt(sum |g_stored - g|^2
/ sum |g|^2). Per batch of ``--batch-sequences`` sequences: "weight-grad err" is |G_stored - G| / |G|
for the gradient of the batch-mean loss w.r.t. all the student's weights (RMS over batches): what an
optimizer step sees, where a sampled store's noise averages over the batch and a truncated store's
bias does not. RS-KD's loss has no teacher log-probabilities: it is the cross-entropy with the
sampled counts, an estimate of CE(p, q) = KL(p || q) + H(p), and is compared with that (its
gradients are those of the KL).

The anchors are encoded in numpy from their published descriptions (no code copied):

- DistillKit (arcee-ai/DistillKit README, "recommended" and "budget" configurations): the top-k
  log-probs sorted, the first ``exact_k`` as bfloat16, the rest replaced by a least-squares fit of
  the listed terms of the rank t = 0..k-exact_k-1 (coefficients float32), the ids bit-packed at
  ceil(log2 V) bits, written as Parquet (pyarrow, its default snappy compression) with one row per
  sequence holding lists of per-token byte vectors. Its KL ("missing: zero", the default) renormalises
  the teacher over the k ids; "symmetric_uniform" adds one bucket for the missing mass on both sides.
- Megatron-LM offline KD (megatron/training/distillation): top-128 fp16 log-probs, the ids' low 16
  bits as uint16 and the 17th bit as a bool byte each, one blob per batch, zstd level 3. Its loss is
  forward KL over the 128 ids plus a "ghost token" for the rest of the mass on both sides.
- NeMo-Aligner (compute_topk_logits.py, k=100 as its docs suggest): JSONL rows with the top-k raw
  logits (float32, printed by json), ids and the log-sum-exp. Its KD loss renormalises teacher and
  student over the k ids.
- RS-KD (Anshumann et al., ACL 2025), as the issue describes it: 12 draws per position from the
  teacher, kept as up to 12 (17-bit id, 7-bit count) slots of 3 bytes plus one byte, 37 B/position.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PLAYS = "data/text/shakespeare/*.md"
SEQ_LEN = 256
TEACHER = "gpt:n_layer=2,n_head=4,n_embd=128,block_size=256"
STUDENT = "gpt:n_layer=1,n_head=2,n_embd=64,block_size=256"
TOPK = [8, 16, 32, 64, 128]
SAMPLE = [4, 8, 12, 16, 32]
THROUGHPUT_CODECS = ["topk:32", "sample:12"]
MEMORY_CODECS = ["topk:32", "sample:12"]
RSKD_DRAWS = 12
NEMO_K = 100


def quiet(*_):
    pass


def progress(message: str) -> None:
    """Where the time goes, on stderr (the results are on stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- tokenizer, teacher, student ------------------------------------------------------------------

def build_tokenizer(directory: Path, vocab_size: int) -> Path:
    """A byte-level BPE over the four plays, saved as a Hugging Face tokenizer directory."""
    if (directory / "tokenizer.json").exists():
        return directory
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [path.read_text(encoding="utf-8") for path in sorted(REPO.glob(PLAYS))]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(str(directory))
    return directory


def rows(tokenizer_dir: Path, split: str, spec: str = PLAYS):
    from logitcache.sources.tokenizers import get_tokenizer
    from logitcache.sources.token_datasets import get_token_dataset

    return get_token_dataset(f"text:{REPO / spec}@{split}", get_tokenizer(f"hf:{tokenizer_dir}"), SEQ_LEN)


def next_token_nll(model, tokens: np.ndarray, mask: np.ndarray, batch: int = 16) -> float:
    total, count = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(tokens), batch):
            ids = torch.as_tensor(tokens[lo:lo + batch], dtype=torch.long)
            logits = model(ids)
            keep = torch.as_tensor(mask[lo:lo + batch])
            nll = torch.nn.functional.cross_entropy(logits[keep].float(), torch.roll(ids, -1, 1)[keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
    return total / count


def train_lm(path: Path, spec: str, train, val, vocab: int, steps: int, batch: int, lr: float, seed: int,
             early: int | None = None) -> dict:
    """Train a GPT on the train rows with next-token cross-entropy (AdamW, warm-up then cosine), a
    fixed number of seeded steps; save logitcache checkpoints (and one after ``early`` steps)."""
    from logitcache.sources import get_model
    from logitcache.sources.checkpoints import save_checkpoint

    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return json.loads(info_path.read_text())
    torch.manual_seed(seed)
    model = get_model(spec, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(seed)
    tokens, mask = torch.as_tensor(train.tokens, dtype=torch.long), torch.as_tensor(train.loss_mask)
    started, warmup = time.perf_counter(), max(1, steps // 10)
    info = {"spec": spec, "vocab": vocab, "steps": steps, "batch": batch, "lr": lr,
            "parameters": sum(p.numel() for p in model.parameters())}
    for step in range(steps):
        cosine = 0.1 + 0.45 * (1 + np.cos(np.pi * (step - warmup) / (steps - warmup)))
        scale = (step + 1) / warmup if step < warmup else cosine
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        pick = torch.as_tensor(rng.integers(0, len(tokens), batch))
        ids, keep = tokens[pick], mask[pick]
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[keep], torch.roll(ids, -1, 1)[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if early is not None and step + 1 == early:
            model.eval()
            save_checkpoint(path.with_name(path.stem + "-early.pt"), model=model, model_spec=spec, num_classes=vocab,
                            state={"steps": early})
            info["early_val_ppl"] = float(np.exp(next_token_nll(model, val.tokens, val.loss_mask)))
            model.train()
    model.eval()
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["train_tokens"] = int(steps * batch * SEQ_LEN)
    info["epochs"] = round(info["train_tokens"] / int(train.lengths.sum()), 2)
    info["train_ppl"] = float(np.exp(next_token_nll(model, train.tokens[:128], train.loss_mask[:128])))
    info["val_ppl"] = float(np.exp(next_token_nll(model, val.tokens, val.loss_mask)))
    save_checkpoint(path, model=model, model_spec=spec, num_classes=vocab, state={"steps": steps})
    info_path.write_text(json.dumps(info))
    return info


def model_logits(checkpoint: Path, tokens: np.ndarray, rows_wanted: np.ndarray, batch: int = 8) -> torch.Tensor:
    """float32 logits of a checkpointed LM at the flat positions ``rows_wanted`` (row i*L + t)."""
    from logitcache.sources import get_model

    model = get_model(f"checkpoint:{checkpoint}", 0).eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(tokens), batch):
            out.append(model(torch.as_tensor(tokens[lo:lo + batch], dtype=torch.long)).float().flatten(0, 1))
    return torch.cat(out)[torch.as_tensor(rows_wanted)]


# -- logitcache dumps ------------------------------------------------------------------------------

def dump_store(store: Path, teacher: Path, tokenizer_dir: Path, dataset: str, codec: str, batch: int = 8):
    from logitcache.dump import DumpConfig, dump

    config = DumpConfig(store=str(store), teacher=f"checkpoint:{teacher}", dataset=dataset,
                        tokenizer=f"hf:{tokenizer_dir}", seq_len=SEQ_LEN, codec=codec, batch_size=batch,
                        progress=False)
    return dump(config, log=quiet)


# -- the anchors' layouts, encoded and decoded in numpy --------------------------------------------

def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """(n, m) non-negative ints -> (n, ceil(m * bits / 8)) bytes, most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    stream = ((values.astype(np.uint64)[..., None] >> shifts) & 1).astype(np.uint8).reshape(len(values), -1)
    return np.packbits(stream, axis=1)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    stream = np.unpackbits(packed, axis=1)[:, : count * bits].reshape(len(packed), count, bits).astype(np.int64)
    return (stream << np.arange(bits - 1, -1, -1)).sum(axis=2)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bfloat16).float().numpy()


def term_matrix(terms: list, count: int) -> np.ndarray:
    t = np.arange(count, dtype=np.float64)
    return np.stack([np.sqrt(t) if term == "sqrt" else t ** term for term in terms], axis=1)


class DistillKit:
    """Top-k log-probs: ``exact`` as bfloat16, the rest a least-squares fit of ``terms`` over the rank,
    ids bit-packed; one Parquet row per sequence (lists of per-token byte vectors)."""

    def __init__(self, name: str, k: int, exact: int, terms: list):
        self.name, self.k, self.exact, self.terms = name, k, exact, terms

    def encode(self, logp: np.ndarray, vocab: int):
        ids = np.argsort(-logp, axis=1, kind="stable")[:, : self.k]
        values = np.take_along_axis(logp, ids, 1)  # descending
        x = term_matrix(self.terms, self.k - self.exact)
        coeffs = np.linalg.lstsq(x, values[:, self.exact:].T.astype(np.float64), rcond=None)[0].T
        coeffs = np.ascontiguousarray(coeffs, dtype=np.float32)
        logprob_bytes = np.concatenate([to_bf16_bits(values[:, : self.exact]).view(np.uint8),
                                        coeffs.view(np.uint8)], axis=1)
        self.bits = int(np.ceil(np.log2(vocab)))
        return logprob_bytes, pack_bits(ids, self.bits)

    def decode(self, logprob_bytes: np.ndarray, id_bytes: np.ndarray):
        exact = from_bf16_bits(logprob_bytes[:, : 2 * self.exact].copy().view(np.int16))
        coeffs = logprob_bytes[:, 2 * self.exact:].copy().view(np.float32)
        fit = coeffs @ term_matrix(self.terms, self.k - self.exact).astype(np.float32).T
        return unpack_bits(id_bytes, self.bits, self.k), np.concatenate([exact, fit], axis=1)

    def nbytes(self, logprob_bytes, id_bytes, lengths, folder: Path) -> int:
        """Bytes of the Parquet file DistillKit's writer would make (pyarrow defaults: snappy)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        def nested(per_token: np.ndarray) -> pa.Array:
            width = per_token.shape[1]
            tokens = pa.ListArray.from_arrays(pa.array(np.arange(len(per_token) + 1, dtype=np.int32) * width),
                                              pa.array(per_token.ravel(), type=pa.uint8()))
            sequences = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            return pa.ListArray.from_arrays(sequences, tokens)

        path = folder / f"{self.name.replace(' ', '_')}.parquet"
        pq.write_table(pa.table({"compressed_logprobs": nested(logprob_bytes),
                                 "bytepacked_indices": nested(id_bytes)}), path)
        return path.stat().st_size


def megatron_encode(logp: np.ndarray, blob_rows: int = 2048):
    """Top-128 fp16 log-probs, uint16 low bits, a bool byte for the 17th bit; zstd-3 per blob."""
    from numcodecs import Zstd

    ids = np.argsort(-logp, axis=1, kind="stable")[:, :128]
    values = np.take_along_axis(logp, ids, 1).astype(np.float16)
    low, high = (ids & 0xFFFF).astype(np.uint16), (ids >> 16).astype(bool)
    raw = zstd = 0
    for lo in range(0, len(ids), blob_rows):
        blob = b"".join(a[lo:lo + blob_rows].tobytes() for a in (values, low, high))
        raw, zstd = raw + len(blob), zstd + len(Zstd(level=3).encode(blob))
    return (ids.astype(np.int64), values.astype(np.float32)), raw, zstd


def nemo_encode(logits: np.ndarray, lengths: np.ndarray, k: int = NEMO_K):
    """JSONL rows (one per sequence) of the top-k raw logits, their ids and the log-sum-exp."""
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(logits, ids, 1).astype(np.float32)
    lse = torch.logsumexp(torch.from_numpy(logits), 1).numpy().astype(np.float32)
    size, lo, decoded = 0, 0, []
    for length in lengths:
        hi = lo + int(length)
        line = json.dumps({"topk_logits": top[lo:hi].tolist(), "topk_token_ids": ids[lo:hi].tolist(),
                           "log_sum_exp_logits": lse[lo:hi].tolist()}, ensure_ascii=False)
        size += len(line.encode("utf-8")) + 1
        row = json.loads(line)
        decoded.append((np.asarray(row["topk_token_ids"]), np.asarray(row["topk_logits"], dtype=np.float32)))
        lo = hi
    return (np.concatenate([d[0] for d in decoded]), np.concatenate([d[1] for d in decoded])), size


def rskd_encode(indices: np.ndarray, counts: np.ndarray, draws: int = RSKD_DRAWS):
    """RS-KD's layout for ``draws`` samples per position, given as unique ids with counts (padding
    has count 0): up to ``draws`` slots of (17-bit id, 7-bit count) = 3 bytes, plus one byte, the
    number of slots used. Returns the decoded (ids, counts), raw bytes, zstd-3 bytes."""
    from numcodecs import Zstd

    used = counts > 0
    ids = np.where(used, indices.astype(np.int64), 0)
    packed = np.concatenate([pack_bits((ids << 7) | counts.astype(np.int64), 24),
                             used.sum(axis=1, keepdims=True).astype(np.uint8)], axis=1)
    assert packed.shape[1] == 3 * draws + 1 and (counts.sum(axis=1) == draws).all()
    words = unpack_bits(packed[:, :-1], 24, draws)  # decode what was stored
    return (words >> 7, words & 0x7F), packed.nbytes, len(Zstd(level=3).encode(packed.tobytes()))


# -- losses as each trainer computes them: per-position values (autograd gives the gradients) ------

EPS = 1e-8


def loss_fn(kind: str, targets: dict):
    """f(z, rows) -> per-row loss for student logits z (n, V) at these target rows."""
    from logitcache.losses import sampled_token_kl, topk_token_kl

    def take(rows):
        return {name: torch.as_tensor(value[rows]) for name, value in targets.items()}

    def topk(z, rows):  # what logitcache's LM trainer computes per target token
        t = take(rows)
        return topk_token_kl(z, t["indices"], t["logprobs"], t["tail"])

    def sample(z, rows):
        t = take(rows)
        return sampled_token_kl(z, t["indices"], t["weights"], t["logprobs"])

    def gathered(z, ids):
        return z.log_softmax(1).gather(1, ids)

    def distillkit_zero(z, rows):
        t = take(rows)
        lp = t["values"] - t["values"].logsumexp(1, keepdim=True)  # missing mass: zero (renormalised)
        return (lp.exp() * (lp - gathered(z, t["ids"]))).sum(1)

    def distillkit_uniform(z, rows):
        t = take(rows)
        lp, lq = t["values"], gathered(z, t["ids"])
        mt = torch.log1p(-lp.exp().sum(1).clamp(EPS, 1 - EPS))
        ms = torch.log1p(-lq.exp().sum(1).clamp(EPS, 1 - EPS))
        return (lp.exp() * (lp - lq)).sum(1) + mt.exp() * (mt - ms)

    def megatron(z, rows):
        t = take(rows)
        lp, lq = t["values"], gathered(z, t["ids"])
        rt = torch.log((1 - lp.exp().sum(1)).clamp(min=EPS))
        rs = torch.log((1 - lq.exp().sum(1)).clamp(min=EPS))
        return (lp.exp() * (lp - lq)).sum(1) + rt.exp() * (rt - rs)

    def nemo(z, rows):
        t = take(rows)
        lp, lq = t["values"].log_softmax(1), z.gather(1, t["ids"]).log_softmax(1)
        return (lp.exp() * (lp - lq)).sum(1)

    def rskd(z, rows):
        t = take(rows)
        return -(t["counts"].float() / RSKD_DRAWS * gathered(z, t["ids"])).sum(1)

    return {"topk": topk, "sample": sample, "distillkit_zero": distillkit_zero,
            "distillkit_uniform": distillkit_uniform, "megatron": megatron, "nemo": nemo, "rskd": rskd}[kind]


class Student:
    """One student on the evaluation positions: its logits, and the exact loss and gradients there.

    ``rows`` are flat store rows (i * L + t) of the evaluation sequences' target positions, in order;
    ``batches`` split them into whole-sequence batches on which the gradient with respect to the
    student's parameters is compared too (what an optimizer step would use)."""

    def __init__(self, name: str, checkpoint: Path, tokens: np.ndarray, sequences: np.ndarray, rows: np.ndarray,
                 teacher_logits: torch.Tensor, batch_sequences: int, chunk: int = 1024):
        from logitcache.sources import get_model

        self.name, self.rows, self.chunk = name, rows, chunk
        self.model = get_model(f"checkpoint:{checkpoint}", 0).eval()
        self.tokens, self.teacher_logits = tokens, teacher_logits
        with torch.inference_mode():
            flat = torch.cat([self.model(torch.as_tensor(tokens[s:s + 1], dtype=torch.long)).float().flatten(0, 1)
                              for s in sequences])
        position = {int(seq) * SEQ_LEN: i * SEQ_LEN for i, seq in enumerate(sequences)}
        self.local = np.asarray([position[r // SEQ_LEN * SEQ_LEN] + r % SEQ_LEN for r in rows])
        self.logits = flat[torch.as_tensor(self.local)]
        self.kl, self.ce, self.grad = [], [], []
        for lo in range(0, len(rows), chunk):
            logp = teacher_logits[lo:lo + chunk].double().log_softmax(1)
            logq = self.logits[lo:lo + chunk].double().log_softmax(1)
            p = logp.exp()
            self.kl.append((p * (logp - logq)).sum(1))
            self.ce.append(-(p * logq).sum(1))
            self.grad.append((logq.exp() - p).float())
        self.kl, self.ce, self.grad = torch.cat(self.kl), torch.cat(self.ce), torch.cat(self.grad)
        self.batches = []  # (sequences, this batch's target rows as indices into rows)
        owner = np.asarray([r // SEQ_LEN for r in rows])
        for lo in range(0, len(sequences), batch_sequences):
            chosen = sequences[lo:lo + batch_sequences]
            self.batches.append((chosen, np.flatnonzero(np.isin(owner, chosen))))
        self.reference = [self._param_grad(chosen, picks, None) for chosen, picks in self.batches]

    def _param_grad(self, chosen, picks, fn) -> tuple[float, torch.Tensor]:
        """The batch-mean loss (dense KL when ``fn`` is None) and its gradient w.r.t. the student's weights."""
        params = [p for p in self.model.parameters()]
        logits = self.model(torch.as_tensor(self.tokens[chosen], dtype=torch.long)).flatten(0, 1)
        start = {int(seq): i * SEQ_LEN for i, seq in enumerate(chosen)}
        at = torch.as_tensor([start[int(r // SEQ_LEN)] + int(r % SEQ_LEN) for r in self.rows[picks]])
        z = logits[at]
        if fn is None:
            logp = self.teacher_logits[torch.as_tensor(picks)].log_softmax(1)
            loss = (logp.exp() * (logp - z.log_softmax(1))).sum(1).mean()
        else:
            loss = fn(z, picks).mean()
        grads = torch.autograd.grad(loss, params)
        return float(loss), torch.cat([g.flatten() for g in grads])

    def measure(self, fn, cross_entropy: bool = False) -> dict:
        """Per position: stored-target loss - exact loss (KL, or CE for a loss that estimates CE) and
        the relative RMS error of the gradient w.r.t. the logits; per batch: the relative error of the
        gradient w.r.t. the student's weights (RMS over batches)."""
        exact = self.ce if cross_entropy else self.kl
        diffs, err2 = [], 0.0
        for lo in range(0, len(self.rows), self.chunk):
            picks = np.arange(lo, min(lo + self.chunk, len(self.rows)))
            z = self.logits[lo:lo + self.chunk].clone().requires_grad_(True)
            loss = fn(z, picks)
            loss.sum().backward()
            diffs.append(loss.detach().double() - exact[lo:lo + self.chunk])
            err2 += float(((z.grad - self.grad[lo:lo + self.chunk]).double() ** 2).sum())
        d = torch.cat(diffs).numpy()
        weight_errors = []
        for (chosen, picks), (_, reference) in zip(self.batches, self.reference, strict=True):
            _, grad = self._param_grad(chosen, picks, fn)
            weight_errors.append(float((grad - reference).norm() / reference.norm()))
        return {"bias": float(d.mean()), "se": float(d.std() / np.sqrt(len(d))), "std": float(d.std()),
                "rmse": float(np.sqrt((d ** 2).mean())),
                "grad": float(np.sqrt(err2 / float((self.grad.double() ** 2).sum()))),
                "weights": float(np.sqrt(np.mean(np.square(weight_errors))))}


# -- section 2: bytes and fidelity -----------------------------------------------------------------

def bytes_and_fidelity(work: Path, tokenizer_dir: Path, teacher: Path, students: dict, eval_sequences: int,
                       batch_sequences: int) -> tuple[dict, list[dict]]:
    """Dump the val split with every codec; encode the anchors over the same real positions; measure
    each layout's loss and gradient errors for every student on the evaluation sequences."""
    from logitcache.store import open_store

    stores, results = work / "stores", []
    stores.mkdir(exist_ok=True)
    dataset = f"text:{REPO / PLAYS}@val"
    codecs = [f"topk:{k}" for k in TOPK] + [f"sample:{k}" for k in SAMPLE]
    opened = {}
    for codec in codecs:
        path = stores / f"{codec.replace(':', '_')}.zarr"
        began = time.perf_counter()
        summary = dump_store(path, teacher, tokenizer_dir, dataset, codec)
        progress(f"dumped {codec} in {time.perf_counter() - began:.1f} s ({summary.seconds:.1f} s writing)")
        opened[codec] = (summary, open_store(str(path)))
    store = opened[codecs[0]][1]
    tokens, lengths, mask = store.tokens, store.lengths, store.loss_mask
    real_rows = np.flatnonzero((np.arange(SEQ_LEN)[None, :] < lengths[:, None]).ravel())
    tokens_real = len(real_rows)
    progress("dense teacher logits")
    teacher_all = model_logits(teacher, tokens, real_rows)  # every real position: the anchors encode these
    logp_all = teacher_all.double().log_softmax(1)

    # evaluation positions: the targets of evenly spread sequences
    sequences = np.linspace(0, len(tokens) - 1, min(eval_sequences, len(tokens))).round().astype(int)
    sequences = np.unique(sequences)
    rows = np.flatnonzero(mask.ravel())
    rows = rows[np.isin(rows // SEQ_LEN, sequences)]
    at = np.searchsorted(real_rows, rows)  # evaluation rows among the real rows
    teacher_eval = teacher_all[torch.as_tensor(at)]
    progress("students' exact losses and gradients")
    evaluated = [Student(name, path, tokens, sequences, rows, teacher_eval, batch_sequences)
                 for name, path in students.items()]
    all_targets = np.searchsorted(real_rows, np.flatnonzero(mask.ravel()))
    p = logp_all[torch.as_tensor(all_targets)].exp()
    stats = {"tokens": tokens_real, "targets": len(all_targets), "eval_positions": len(rows),
             "eval_sequences": len(sequences), "batch_sequences": batch_sequences,
             "entropy": float(-(p * logp_all[torch.as_tensor(all_targets)]).sum(1).mean()),
             "top1": float(p.max(1).values.mean()), "perplexity": float(opened[codecs[0]][0].metrics["perplexity"])}
    for k in (8, 32, 128):
        stats[f"mass_top{k}"] = float(p.topk(k, 1).values.sum(1).mean())
    for student in evaluated:
        stats[f"kl_{student.name}"] = float(student.kl.mean())
    del p

    def add(layout, on_disk, raw, kind, targets, note="", cross_entropy=False):
        progress(f"fidelity of {layout}")
        row = {"layout": layout, "bytes": on_disk / tokens_real, "raw": None if raw is None else raw / tokens_real,
               "note": note}
        fn = loss_fn(kind, targets)
        for student in evaluated:
            row[student.name] = student.measure(fn, cross_entropy=cross_entropy)
        results.append(row)

    for codec in codecs:
        summary, opened_store = opened[codec]
        t = opened_store.teacher()
        sparse = t.codec.sparse_targets(t.read_stored(0, opened_store.num_rows))
        raw = (t.codec.bytes_per_sample(t.num_classes) + (4 if t.codec.keeps_logsumexp else 0)) * opened_store.num_rows
        add(f"logitcache {codec}", summary.bytes_on_disk, raw, "topk" if codec.startswith("topk") else "sample",
            {name: value[rows] for name, value in sparse.items()})

    logp_np = logp_all.float().numpy()
    del logp_all
    vocab = logp_np.shape[1]
    for kit in (DistillKit("DistillKit recommended", 128, 16, [0, 1, 2, 3, 4, "sqrt"]),
                DistillKit("DistillKit budget", 50, 1, [0, 1, "sqrt"])):
        lp_bytes, id_bytes = kit.encode(logp_np, vocab)
        size = kit.nbytes(lp_bytes, id_bytes, lengths, work)
        ids, values = kit.decode(lp_bytes, id_bytes)
        decoded = {"ids": ids[at], "values": values[at]}
        note = f"k={kit.k}, {kit.exact} exact bf16, terms {kit.terms} (float32), {kit.bits}-bit ids; Parquet"
        add(f"{kit.name} (missing: zero)", size, lp_bytes.nbytes + id_bytes.nbytes, "distillkit_zero", decoded, note)
        if kit.k == 128:
            add(f"{kit.name} (symmetric_uniform)", size, lp_bytes.nbytes + id_bytes.nbytes, "distillkit_uniform",
                decoded, "the same bytes, the other missing-mass rule")
    (ids, values), raw, zstd = megatron_encode(logp_np)
    add("Megatron-LM offline KD", zstd, raw, "megatron", {"ids": ids[at], "values": values[at]},
        "top-128 fp16 log-probs + uint16 low id bits + a bool byte for the 17th bit, zstd-3 per 2,048 positions")
    (ids, values), size = nemo_encode(teacher_all.numpy(), lengths)
    add(f"NeMo-Aligner (k={NEMO_K})", size, None, "nemo", {"ids": ids[at], "values": values[at]},
        "JSONL text: top-100 float32 logits, ids, log-sum-exp; its loss renormalises both sides over the 100 ids")
    # RS-KD's 12 draws are those of the sample:12 store (draws from the same p, so either set is a
    # faithful RS-KD realisation): the comparison is paired, and the two gradients are identical
    sampled = opened[f"sample:{RSKD_DRAWS}"][1].teacher().read_stored(0, store.num_rows)
    (ids, counts), raw, zstd = rskd_encode(sampled["indices"][real_rows], sampled["counts"][real_rows])
    add(f"RS-KD ({RSKD_DRAWS} draws)", raw, None, "rskd", {"ids": ids[at], "counts": counts[at]},
        f"12 x (17-bit id, 7-bit count) + 1 B, raw (zstd-3 would make it {zstd / tokens_real:.1f} B); the draws of "
        f"the sample:{RSKD_DRAWS} store, so the two are paired; its loss is the cross-entropy with the counts, "
        "compared with the exact CE", cross_entropy=True)
    return stats, results


def print_fidelity(stats: dict, results: list[dict], infos: dict) -> None:
    print(f"\nHeld-out val split: {stats['tokens']} tokens ({stats['targets']} targets). The teacher there: perplexity "
          f"{stats['perplexity']:.1f}, mean entropy {stats['entropy']:.2f} nats, mean top-1 probability "
          f"{stats['top1']:.3f}, mass in its top 8 / 32 / 128 ids {stats['mass_top8']:.3f} / {stats['mass_top32']:.3f} "
          f"/ {stats['mass_top128']:.3f}. Errors are measured at the {stats['eval_positions']} target positions of "
          f"{stats['eval_sequences']} evenly spread val sequences; weight gradients on batches of "
          f"{stats['batch_sequences']} of those sequences.")
    for name, info in infos.items():
        print(f"Student {name!r}: {info}; exact KL(teacher || student) there {stats['kl_' + name]:.3f} nats/position.")
    for name in infos:
        print(f"\nstudent {name!r}: stored-target loss minus exact loss per position (T=1); gradient errors relative")
        print("| layout | bytes/token on disk | before compression | loss bias (± s.e.) | loss std | loss rmse "
              "| logit-grad err | weight-grad err |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in results:
            f = row[name]
            raw = "-" if row["raw"] is None else f"{row['raw']:.1f}"
            print(f"| {row['layout']} | {row['bytes']:.1f} | {raw} | {f['bias']:+.4f} ± {f['se']:.4f} | {f['std']:.4f} "
                  f"| {f['rmse']:.4f} | {f['grad']:.3f} | {f['weights']:.3f} |")
    print("\nAnchor layouts (bytes: what their writer puts on disk, per real token):")
    for row in results:
        if row["note"]:
            print(f"- {row['layout']}: {row['note']}")


def verdict(ours: dict, anchor: dict) -> str:
    """met: a smaller weight-gradient error and no larger loss bias (beyond 3 s.e.); tie: the same
    errors within 1 % (the same estimator on the same draws, or the same coarsened KL computed by
    another implementation in float32)."""
    if abs(ours["weights"] - anchor["weights"]) <= 0.01 * anchor["weights"] and \
            abs(abs(ours["bias"]) - abs(anchor["bias"])) <= 1e-6 + 3 * ours["se"]:
        return "tie"
    if ours["weights"] < anchor["weights"] and abs(ours["bias"]) <= abs(anchor["bias"]) + 3 * ours["se"]:
        return "met"
    return "NOT met"


def goals(results: list[dict], students: list[str]) -> None:
    """The issue's two fidelity goals, judged per student on the weight-gradient error (what a
    training step sees) and the loss bias (what does not average away)."""
    ours = [r for r in results if r["layout"].startswith("logitcache")]
    anchors = [r for r in results if not r["layout"].startswith("logitcache")]
    rskd = next(r for r in anchors if r["layout"].startswith("RS-KD"))
    print("\nGoal 1: a logitcache sample:K store at <= 40 B/token with (at most) RS-KD's 12-sample error")
    for name in students:
        within = [r for r in ours if "sample" in r["layout"] and r["bytes"] <= 40]
        for best in within:
            b, a = best[name], rskd[name]
            print(f"  {name}: {best['layout']} {best['bytes']:.1f} B/token: weight-grad err {b['weights']:.3f}, "
                  f"logit-grad err {b['grad']:.3f}, loss bias {b['bias']:+.4f} ± {b['se']:.4f}, loss rmse "
                  f"{b['rmse']:.3f} | RS-KD {rskd['bytes']:.1f} B: {a['weights']:.3f}, {a['grad']:.3f}, "
                  f"{a['bias']:+.4f} ± {a['se']:.4f}, {a['rmse']:.3f} -> {verdict(b, a)}")
    print("\nGoal 2: at no more bytes than each anchor, a logitcache store with a smaller error "
          "(weight-grad err, and |loss bias| no larger)")
    for name in students:
        print(f"  student {name!r}:")
        for anchor in anchors:
            a = anchor[name]
            cheaper = [r for r in ours if r["bytes"] <= anchor["bytes"]]
            if not cheaper:
                print(f"    {anchor['layout']} ({anchor['bytes']:.1f} B): no logitcache store that small -> NOT met")
                continue
            order = {"met": 0, "tie": 1, "NOT met": 2}
            best = min(cheaper, key=lambda r: (order[verdict(r[name], a)], r[name]["weights"]))
            b = best[name]
            print(f"    {anchor['layout']} ({anchor['bytes']:.1f} B: weight-grad {a['weights']:.3f}, "
                  f"bias {a['bias']:+.4f}) vs {best['layout']} ({best['bytes']:.1f} B: {b['weights']:.3f}, "
                  f"{b['bias']:+.4f}) -> {verdict(b, a)}")


# -- section 3: throughput -------------------------------------------------------------------------

def bare_forward(teacher: Path, tokenizer_dir: Path, dataset: str, batch: int,
                 reduce: str | None = None) -> tuple[float, float, int]:
    """What the dump does before and in its loop, minus the store: tokenise, load the teacher, then
    the model over the same (B, L) id batches under inference_mode, outputs discarded. With
    ``reduce``, each batch's logits also go through the dump's DeviceReducer for that codec (no
    store): the dump's cost split into reduction and store. Returns (whole, loop, tokens)."""
    from logitcache.dump.reduce import DeviceReducer
    from logitcache.sources import get_model
    from logitcache.sources.tokenizers import get_tokenizer
    from logitcache.sources.token_datasets import get_token_dataset
    from logitcache.store import get_codec

    started = time.perf_counter()
    tokenizer = get_tokenizer(f"hf:{tokenizer_dir}")
    source = get_token_dataset(dataset, tokenizer, SEQ_LEN)
    model = get_model(f"checkpoint:{teacher}", tokenizer.vocab_size).eval()
    codec = reduce and get_codec(reduce).for_classes(tokenizer.vocab_size)
    reducer = reduce and DeviceReducer(codec)
    looped = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(source.tokens), batch):
            ids = torch.as_tensor(source.tokens[lo:lo + batch], dtype=torch.long)
            logits = model(ids)
            if reducer:
                real = torch.arange(SEQ_LEN)[None, :] < torch.as_tensor(source.lengths[lo:lo + batch])[:, None]
                uniforms = codec.uniforms(lo, ids.numel())  # None for a codec that draws nothing
                reducer(logits.flatten(0, 1), torch.roll(ids, -1, 1).flatten(),
                        torch.as_tensor(source.loss_mask[lo:lo + batch]).flatten(), real.flatten(), uniforms)
            del logits  # as in the dump: a batch's logits are gone before the next batch runs
    done = time.perf_counter()
    return done - started, done - looped, int(source.lengths.sum())


def random_teacher(work: Path, spec: str, vocab: int) -> Path:
    """A checkpoint of ``spec`` with seeded random weights, for timing only."""
    from logitcache.sources import get_model
    from logitcache.sources.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = get_model(spec, vocab).eval()
    path = work / "tp-teacher.pt"
    save_checkpoint(path, model=model, model_spec=spec, num_classes=vocab, state={})
    print(f"\nthroughput teacher: {spec} with random weights, {sum(p.numel() for p in model.parameters()):,} parameters")
    return path


def throughput(work: Path, tokenizer_dir: Path, teacher: Path, rounds: int, batch: int, dataset: str,
               vocab: int) -> dict:
    """Interleaved rounds of: the bare forward; per codec, the forward plus the dump's reduction (no
    store) and the whole dump. Median ratios to the bare forward of the same round."""
    print(f"\nDump throughput: {dataset.split('/')[-1]}, seq-len {SEQ_LEN}, batch {batch} sequences, "
          f"torch threads {torch.get_num_threads()}, {rounds} interleaved rounds (the order rotates)")
    modes = ["bare"] + [f"{kind} {codec}" for codec in THROUGHPUT_CODECS for kind in ("reduce", "dump")]
    bare_forward(teacher, tokenizer_dir, dataset, batch)  # warm-up: imports, allocator, kernels, file cache
    began = time.perf_counter()
    dump_store(work / "tp-warm-up.zarr", teacher, tokenizer_dir, dataset, "topk:8", batch)  # and the dump's imports
    subprocess.run(["rm", "-rf", str(work / "tp-warm-up.zarr")], check=True)
    print(f"(a first dump in this process took {time.perf_counter() - began:.1f} s: it imports torchvision and "
          "torch._dynamo to record their versions; the rounds below run after it)")
    times, loops = {m: [] for m in modes}, {m: [] for m in modes}
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        line = []
        for mode in order:
            kind, _, codec = mode.partition(" ")
            if kind == "dump":
                path = work / f"tp-{r}-{codec.replace(':', '_')}.zarr"
                started = time.perf_counter()
                summary = dump_store(path, teacher, tokenizer_dir, dataset, codec, batch)
                whole, loop, tokens = time.perf_counter() - started, summary.seconds, summary.tokens
                subprocess.run(["rm", "-rf", str(path)], check=True)
            else:
                whole, loop, tokens = bare_forward(teacher, tokenizer_dir, dataset, batch, codec or None)
            times[mode].append(whole)
            loops[mode].append(loop)
            line.append(f"{mode} {whole:.1f} s (loop {loop:.1f} s)")
        print(f"round {r + 1}: " + ", ".join(line), flush=True)
    out = {"tokens": tokens, "vocab": vocab}
    print(f"\n{tokens} tokens per run; medians over rounds of (mode / bare forward of the same round):")
    print("| mode | whole call | loop only | tokens/s (loop) |")
    print("|---|---:|---:|---:|")
    for mode in modes:
        whole = statistics.median(t / b for t, b in zip(times[mode], times["bare"], strict=True))
        loop = statistics.median(t / b for t, b in zip(loops[mode], loops["bare"], strict=True))
        out[mode] = (whole, loop)
        print(f"| {mode} | {whole:.3f} | {loop:.3f} | {tokens / statistics.median(loops[mode]):,.0f} |")
    bare = statistics.median(loops["bare"])
    for codec in THROUGHPUT_CODECS:
        reduction = statistics.median(loops[f"reduce {codec}"]) - bare
        store = statistics.median(loops[f"dump {codec}"]) - statistics.median(loops[f"reduce {codec}"])
        print(f"{codec}: the reduction adds {reduction / tokens * 1e6:.0f} us per position "
              f"({reduction / (tokens * out['vocab']) * 1e9:.2f} ns per logit), the store "
              f"{store / tokens * 1e6:.0f} us "
              f"per position; the bare forward takes {bare / tokens * 1e6:.0f} us per position")
    print("goal: dump / bare forward <= 1.10")
    return out


# -- section 4: peak host memory -------------------------------------------------------------------

CHILD = r"""
import json, sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from benchmarks.lm_store import bare_forward, dump_store
from pathlib import Path
mode, teacher, tok, dataset, store, batch = sys.argv[1:]
if mode == "bare":
    bare_forward(Path(teacher), Path(tok), dataset, int(batch))
else:
    dump_store(Path(store), Path(teacher), Path(tok), dataset, mode, int(batch))
status = open("/proc/self/status").read().splitlines()
print(json.dumps({{"hwm_kib": int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))}}))
"""


def memory(work: Path, tokenizer_dir: Path, vocabs: list[int], batch: int, dataset: str) -> dict:
    """Peak RSS of a fresh process: bare forward vs dumps, random-init GPT heads of several widths.
    VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark into ru_maxrss across exec."""
    from logitcache.sources import get_model
    from logitcache.sources.checkpoints import save_checkpoint

    print(f"\nPeak host memory (VmHWM, the peak resident set, of a fresh process each; {dataset.split('/')[-1]}, "
          f"batch {batch} x {SEQ_LEN} "
          "positions, random-init gpt:n_layer=1,n_head=2,n_embd=64 with a head of V ids; the reducer's budget is "
          "256 MiB)")
    dumps = " | ".join(f"dump {c} (extra)" for c in MEMORY_CODECS)
    print(f"| V | logits per batch (fp32) | bare forward | {dumps} |")
    print("|---:|---:|---:|" + "---:|" * len(MEMORY_CODECS))
    out = {}
    for vocab in vocabs:
        checkpoint = work / f"random-{vocab}.pt"
        torch.manual_seed(vocab)
        spec = "gpt:n_layer=1,n_head=2,n_embd=64,block_size=256"
        save_checkpoint(checkpoint, model=get_model(spec, vocab), model_spec=spec, num_classes=vocab, state={})
        peaks = {}
        for mode in ["bare"] + MEMORY_CODECS:
            store = work / f"mem-{vocab}-{mode.replace(':', '_')}.zarr"
            result = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, str(checkpoint),
                                     str(tokenizer_dir), dataset, str(store), str(batch)],
                                    capture_output=True, text=True, check=False,
                                    env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
            if result.returncode:
                raise RuntimeError(result.stderr[-2000:])
            peaks[mode] = json.loads(result.stdout.strip().splitlines()[-1])["hwm_kib"] / 1024
            subprocess.run(["rm", "-rf", str(store)], check=True)
        out[vocab] = peaks
        logits_mib = batch * SEQ_LEN * vocab * 4 / 2**20
        cells = " | ".join(f"{peaks[c]:,.0f} MiB (+{peaks[c] - peaks['bare']:,.0f})" for c in MEMORY_CODECS)
        print(f"| {vocab:,} | {logits_mib:,.0f} MiB | {peaks['bare']:,.0f} MiB | {cells} |")
    return out


# -- main ------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="keep the tokenizer, models and stores here (reused when present)")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary of the tokenizer and teacher")
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--student-steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    parser.add_argument("--throughput-data", default="data/text/shakespeare/macbeth.md@train")
    parser.add_argument("--throughput-teacher", default=None,
                        help="a GPT spec whose random-init weights time the dump instead of the trained teacher "
                             "(a forward's cost depends on the shapes only): how the ratio moves with its size")
    parser.add_argument("--memory-vocabs", default="8192,32768,65536")
    parser.add_argument("--eval-sequences", type=int, default=16, help="val sequences whose targets are evaluated")
    parser.add_argument("--batch-sequences", type=int, default=8, help="sequences per weight-gradient batch")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command: python -m benchmarks.lm_store " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer_dir = build_tokenizer(work / f"bpe{args.vocab}", args.vocab)
        train, val = rows(tokenizer_dir, "train"), rows(tokenizer_dir, "val")
        print(f"tokenizer: byte-level BPE, vocabulary {args.vocab}, trained on the four plays; "
              f"train split {int(train.lengths.sum())} tokens, val {int(val.lengths.sum())} tokens, rows of {SEQ_LEN}")
        teacher = work / "teacher.pt"
        info = train_lm(teacher, TEACHER, train, val, args.vocab, args.teacher_steps, batch=8, lr=3e-3, seed=0)
        print(f"teacher: {TEACHER}, {info['parameters']:,} parameters, {info['steps']} AdamW steps of 8 x {SEQ_LEN} "
              f"tokens ({info['epochs']} epochs, {info['seconds']} s): train perplexity {info['train_ppl']:.1f}, "
              f"held-out (val) perplexity {info['val_ppl']:.1f}")
        student_path = work / "student.pt"
        sinfo = train_lm(student_path, STUDENT, train, val, args.vocab, args.student_steps, batch=8, lr=3e-3, seed=1,
                         early=max(1, args.student_steps // 6))
        students = {"small GPT": student_path, "small GPT, early": work / "student-early.pt"}
        infos = {"small GPT": f"{STUDENT}, {sinfo['parameters']:,} parameters, {sinfo['steps']} steps, "
                              f"val perplexity {sinfo['val_ppl']:.1f}",
                 "small GPT, early": f"the same after {max(1, args.student_steps // 6)} steps, val perplexity "
                                     f"{sinfo['early_val_ppl']:.1f}"}
        print(f"setup took {time.perf_counter() - started:.0f} s")
        if not args.skip_fidelity:
            stats, results = bytes_and_fidelity(work, tokenizer_dir, teacher, students, args.eval_sequences,
                                                args.batch_sequences)
            print_fidelity(stats, results, infos)
            goals(results, list(students))
            print(f"(fidelity done at {time.perf_counter() - started:.0f} s)")
        if not args.skip_throughput:
            timed = random_teacher(work, args.throughput_teacher, args.vocab) if args.throughput_teacher else teacher
            throughput(work, tokenizer_dir, timed, args.rounds, 8, f"text:{REPO / args.throughput_data}", args.vocab)
        if not args.skip_memory:
            memory(work, tokenizer_dir, [int(v) for v in args.memory_vocabs.split(",")], 8,
                   f"text:{REPO / 'data/text/shakespeare/macbeth.md'}@val")
    cpu = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for field in ("ru_utime", "ru_stime"))
    print(f"\ntotal {time.perf_counter() - started:.0f} s wall, {cpu:.0f} s CPU (load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
