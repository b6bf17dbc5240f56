"""The token task: a causal LM student trained on token sequences.

    $ logitcache train --store lm.zarr --val-store val.zarr --student gpt:n_layer=2 --loss kl --out runs/kd
    $ logitcache train --dataset 'text:plays/*.md@train' --val-dataset 'text:plays/*.md@val' \\
          --tokenizer bytes --seq-len 256 --student gpt:n_layer=4 --loss ce --out runs/teacher

A token store is the training set itself: its sequences, loss mask and teacher targets (``lm.py``,
``TokenStoreDataset``); without a store, ``--dataset`` and ``--tokenizer`` make the sequences
(label-only, ``--loss ce``: how a newcomer trains a teacher to dump). The student is checked to
predict the store's vocabulary over a whole sequence; a step is
``ce_weight * CE + kd_weight * KL`` per target token (``losses/token_sums.py``); evaluation is
validation cross-entropy, perplexity, and with a ``--val-store`` top-1 agreement with the teacher
and the KL to it (``val_kl``, the KD term at T = 1 over the stored targets).
With ``--chunked-loss`` (by default when a step's float32 logits would exceed one chunk,
``losses/chunked.py``, and the student splits at its head) the loss and the evaluation go through
the head a chunk of positions at a time: the (batch, positions, vocabulary) logits never exist.
Not under torchrun: DistributedDataParallel syncs gradients only through the model's forward.
Under torchrun each step's loss is divided by the whole step's target count (every rank's
batch), so two processes at batch B train what one process at 2B does.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import torch

from ..distributed import Distributed
from ..errors import ConfigError, ModelError, StepMemoryError, StoreMismatchError
from ..lm import TokenStoreDataset, lm_split, open_teacher, teacher_of
from ..losses import TokenLossSums, next_token_targets, position_loss_sums, token_loss, token_loss_sums
from ..losses.token_sums import vocabulary_mismatch
from ..losses.chunked import chunk_positions, chunked_head, chunked_token_loss_sums, worth_chunking
from ..sources import get_model, get_token_dataset, get_tokenizer, lm_context_length
from ..store import open_store
from .train_config import TrainConfig
from .paired_data import EpochSampler, check_teacher_identity
from .run_summary import TrainSummary


class LMTrainSummary(TrainSummary):
    def results(self) -> list[str]:
        last, best_epoch = self.last, self.best
        lines = [f"  last epoch: {_val_text(last)}, train loss {last['train_loss']:.4f}, "
                 f"{last['tokens_per_second']:,.0f} tokens/s"]
        if last.get("val_loss") is not None:
            lines.append(f"  best epoch {best_epoch['epoch']}: val loss {best_epoch['val_loss']:.4f} nats/token, "
                         f"perplexity {best_epoch['val_ppl']:.3f}{_kl_text(best_epoch)}")
        return lines


class TokenTask:
    """Answers ``trainer.Task`` for token sequences: batches of whole sequences, a causal LM student
    whose head is the vocabulary, a loss per target token."""

    def __init__(self, config: TrainConfig, store, log):
        self.config, self.store, self.log = config, store, log
        self.connectors = None

    def build(self, device) -> torch.nn.Module:
        # Data: the training sequences (and their teacher targets), the held-out ones.
        self.device = device
        self.data, tokenizer = _training_data(self.config, self.store, self.log)
        self.val_data = _validation_data(self.config, self.data, tokenizer, self.log)
        self.num_classes = self.data.vocab_size
        # The student, checked against the data before any step.
        return _checked_student(self.config, self.data.vocab_size, [self.data, self.val_data], device)

    def prepare(self, student, dist: Distributed) -> torch.nn.Module:
        self.dist = dist
        self.sampler = _sampler(self.config, self.data, dist)
        self.steps_per_epoch = -(-len(self.sampler) // self.config.batch_size)
        self.reads_teacher = token_loss(self.config.loss).needs_teacher
        self.split, self.head = _loss_split(self.config, student, self.data, dist, self.device, self.log)
        return student

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        self.sampler.set_epoch(epoch)
        order, size = self.sampler.rank_order(), self.config.batch_size
        self.step_targets = _step_targets(self.sampler, self.data, size)
        self.tokens = 0
        return [order[i:i + size] for i in range(0, len(order), size)]

    def step_loss(self, model, indices, epoch: int, step_in_epoch: int) -> tuple[torch.Tensor, tuple]:
        config = self.config
        batch = {name: value.to(self.device, non_blocking=True) for name, value in self.data.batch(indices).items()}
        try:
            sums = self._sums(model, batch, teacher_of(batch) if self.reads_teacher else None)
        except RuntimeError as err:
            if not out_of_memory(err):
                raise
            could_chunk = not self.dist.enabled and callable(getattr(model, "head_logits", None))
            advice = _memory_advice(config, batch["input_ids"].shape, self.num_classes, self.head, could_chunk)
            raise StepMemoryError(advice) from None
        # Each rank's sum over the whole step's targets, times world_size: DDP's mean of the ranks'
        # gradients is then the gradient of the mean over every target token of the step.
        targets = max(self.step_targets[step_in_epoch], 1)
        loss = sums.total(config.ce_weight, config.kd_weight) * (self.dist.world_size / targets)
        return loss, (sums, targets, batch["attention_mask"])

    def _sums(self, model, batch: dict, teacher) -> TokenLossSums:
        """The batch's CE and KL sums: by chunks through the student's head (each chunk's gradient
        taken here, in the forward), or from its whole logits."""
        config = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            if self.head is not None:
                return chunked_token_loss_sums(self.split.hidden_states(batch["input_ids"]), self.head,
                                               batch["labels"], teacher, config.temperature, config.ce_weight,
                                               config.kd_weight)
            logits = _logits(model(batch["input_ids"]))
        return token_loss_sums(logits, batch["labels"], teacher, config.temperature)

    def before_optimizer_step(self) -> None:
        pass

    def step_losses(self, parts: tuple) -> tuple[float, float, float]:
        sums, targets, attention_mask = parts
        ce, kd = (v / targets for v in self.dist.sum([sums.ce.item(), sums.kd.item()]))
        self.tokens += int(attention_mask.sum())
        return self.config.ce_weight * ce + self.config.kd_weight * kd, ce, kd

    def epoch_totals(self, seconds: float) -> dict:
        tokens = int(self.dist.sum([self.tokens])[0])  # every rank's
        return {"train_tokens": tokens, "tokens_per_second": round(tokens / max(seconds, 1e-9), 1)}

    def evaluate(self, student) -> dict:
        split = self.split if self.head is not None else None
        return evaluate(student, self.val_data, self.config, self.device, split)

    def epoch_line(self, record: dict) -> str:
        parts = f"ce {record['train_ce']:.4f}" + (f", kd {record['train_kd']:.4f}" if self.reads_teacher else "")
        return (f"epoch {record['epoch']}/{self.config.epochs}: train loss {record['train_loss']:.4f} ({parts}), "
                f"{_val_text(record)}, {record['tokens_per_second']:,.0f} tokens/s, {record['epoch_seconds']:.1f} s")

    def stop_error(self, record: dict) -> Exception | None:
        return None

    def summary(self, **fields) -> LMTrainSummary:
        return LMTrainSummary(**fields)


def _training_data(config: TrainConfig, store, log) -> tuple[TokenStoreDataset, dict]:
    """The training sequences with their teacher's targets (when the loss reads them), and the
    tokenizer record they were made with."""
    if store is None:
        tokenizer = get_tokenizer(config.tokenizer)
        source = get_token_dataset(config.dataset, tokenizer, config.seq_len)
        data = TokenStoreDataset.from_arrays(source.tokens, source.loss_mask, source.lengths, tokenizer.vocab_size)
        log(f"training on {config.dataset}: {len(data)} sequences x {data.seq_len} tokens, "
            f"{int(data.targets_per_sequence.sum())} targets, vocabulary {tokenizer.vocab_size}")
        return data, tokenizer.describe()
    reads_teacher = token_loss(config.loss).needs_teacher
    data = TokenStoreDataset(store, config.teacher, targets=reads_teacher, cache_budget=config.cache_budget,
                             allow_partial=config.allow_partial)
    what = "no teacher read (--loss ce)"
    if data.targets is not None:
        check_expected_teacher(data.teacher, config.expect_teacher)
        mode = "in memory" if data.targets.in_memory else f"read by chunk, {data.targets.window_blocks} cached"
        what = f"teacher {data.teacher.name!r} ({data.targets.codec.name}, {mode})"
    log(f"training on {config.store}: {len(data)} sequences x {data.seq_len} tokens, "
        f"{int(data.targets_per_sequence.sum())} targets, vocabulary {data.vocab_size}; {what}")
    return data, store.dataset["tokenizer"]


def check_expected_teacher(teacher, expected: str | None) -> None:
    """--expect-teacher: the teacher's digest (or weights or parameters sha256) starts with it."""
    if not expected:
        return
    settings = teacher.attrs["settings"]
    check_teacher_identity(SimpleNamespace(
        teacher_names=[teacher.name], location=teacher.store.location,
        recorded={teacher.name: [settings.get("weights_sha256"), settings.get("parameters_sha256"), teacher.digest]},
    ), expected)


def _validation_data(config: TrainConfig, train_data: TokenStoreDataset, tokenizer: dict, log):
    """The held-out sequences (with the teacher's targets, from --val-store), or None."""
    if config.val_store:
        val_store = open_store(config.val_store, storage_options=config.storage_options)
        if not val_store.is_tokens:
            raise StoreMismatchError(f"--val-store {config.val_store} holds labelled samples, not token sequences")
        _same_vocabulary(f"--val-store {config.val_store}", val_store.dataset["tokenizer"], val_store.vocab_size,
                         tokenizer, train_data.vocab_size)
        name = config.teacher if config.teacher in val_store.all_teacher_names else None
        if name is None and val_store.all_teacher_names:  # its only one, or a line that names the CLI's option
            name = open_teacher(val_store, None, allow_partial=True, argument="--teacher").name
        data = TokenStoreDataset(val_store, name, targets=bool(val_store.all_teacher_names),
                                 cache_budget=config.cache_budget)
        teacher = (f", agreement with teacher {data.teacher.name!r} and {kl_meaning(data.targets)}"
                   if data.teacher is not None else "")
        where = config.val_store
    elif config.val_dataset:
        val_tokenizer = get_tokenizer(config.tokenizer or tokenizer["spec"])  # the training data's (resolve.py)
        source = get_token_dataset(config.val_dataset, val_tokenizer, config.seq_len or train_data.seq_len)
        data = TokenStoreDataset.from_arrays(source.tokens, source.loss_mask, source.lengths, train_data.vocab_size)
        teacher, where = "", config.val_dataset
    else:
        return None
    log(f"validating on {where}: {len(data)} sequences, {int(data.targets_per_sequence.sum())} targets{teacher}")
    return data


def _same_vocabulary(what: str, record: dict, vocab_size: int, training: dict, training_vocab: int) -> None:
    if vocab_size != training_vocab or record.get("identity") != training.get("identity"):
        raise StoreMismatchError(f"{what} has tokenizer {record.get('spec')!r} ({record.get('vocab_size')} ids, vocabulary "
                                 f"{vocab_size}), but the training data was made with {training.get('spec')!r} "
                                 f"({training.get('vocab_size')} ids, vocabulary {training_vocab}): they must match")


def _checked_student(config: TrainConfig, vocab_size: int, datasets: list, device):
    """The student, built under the run's seed; one forward pass over a whole sequence checks
    that it is a causal LM whose head predicts exactly the store's vocabulary."""
    torch.manual_seed(config.seed)
    student = get_model(config.student, vocab_size).to(device)
    length = max(d.seq_len for d in datasets if d is not None)
    context = lm_context_length(student)
    if context is not None and length > context:
        raise ModelError(f"the student's context is {context} tokens, shorter than the sequences ({length} tokens); "
                         "give it a longer context (gpt: block_size)")
    student.eval()
    with torch.no_grad():
        try:
            logits = _logits(student(torch.zeros((1, length), dtype=torch.long, device=device)))
        except Exception as err:
            raise ModelError(f"the student fails on a sequence of {length} token ids: "
                             f"{str(err).strip().splitlines()[0]}") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != (1, length):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"the student outputs {shape} for one sequence of {length} tokens; token data needs a causal "
                         "LM's (batch, positions, vocabulary) logits")
    if logits.shape[2] != vocab_size:
        raise ModelError(vocabulary_mismatch(logits.shape[2], vocab_size))
    return student


def _sampler(config: TrainConfig, data: TokenStoreDataset, dist: Distributed) -> EpochSampler:
    """A seeded order of the sequences; block-shuffled by chunk when the targets are read by chunk."""
    streamed = data.targets is not None and not data.targets.in_memory
    per_chunk = data.targets.block_rows // data.seq_len if streamed else None
    return EpochSampler(np.arange(len(data)), config.seed, block_rows=per_chunk,
                        window_blocks=data.targets.window_blocks if streamed else 1,
                        rank=dist.rank, world_size=dist.world_size)


def _step_targets(sampler: EpochSampler, data: TokenStoreDataset, batch_size: int) -> list[int]:
    """Target tokens per step over every rank's batch: what each step's loss is divided by."""
    counts = data.targets_per_sequence
    total = None
    for rank in range(sampler.world_size):
        other = copy.copy(sampler)
        other.rank = rank
        order = other.rank_order()
        steps = np.add.reduceat(counts[order], np.arange(0, len(order), batch_size)) if len(order) else []
        total = np.asarray(steps) if total is None else total + steps
    return [int(t) for t in total]


def _loss_split(config: TrainConfig, student, data: TokenStoreDataset, dist: Distributed, device, log):
    """(the student's split, its ``ChunkedHead``) when the loss goes a chunk of positions at a time,
    else (None, None): with --chunked-loss, or by default when a step's float32 logits exceed one
    chunk (``worth_chunking``); never under torchrun, whose DDP syncs through the model's forward."""
    if config.chunked_loss is False or (config.chunked_loss is None and
                                        not worth_chunking(config.batch_size * data.seq_len, data.vocab_size)):
        return None, None
    probe = (torch.arange(min(data.seq_len, 16), device=device) % data.vocab_size)[None]  # (1, T)
    why = "under torchrun (DistributedDataParallel syncs gradients only through the model's forward)"
    if not dist.enabled:
        try:
            split, why = lm_split(student, probe)[0], None
        except ConfigError:
            why = "for a student without hidden_states and head_logits that give its own logits"
    if why:
        if config.chunked_loss:
            raise ConfigError(f"--chunked-loss is not available {why}; leave it out")
        log(f"the loss takes the whole (batch, positions, vocabulary) logits: no chunked loss {why}")
        return None, None
    with torch.no_grad():
        head = chunked_head(student, split.head_logits, split.hidden_states(probe))
    log(f"the loss goes by chunks of {chunk_positions(head.vocab_size):,} positions through the student's head "
        f"(vocabulary {head.vocab_size:,}), never the whole logits")
    return split, head


def out_of_memory(err: RuntimeError) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError or the CPU allocator's."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def _memory_advice(config: TrainConfig, shape, vocab_size: int, head, could_chunk: bool) -> str:
    """One line for a step that ran out of memory: what to lower (or turn on)."""
    where = f"--batch-size {config.batch_size} ({shape[0]} x {shape[1]:,} positions, vocabulary {vocab_size:,}"
    if head is not None:
        return (f"the student's step ran out of memory at {where}, the loss by chunks of "
                f"{chunk_positions(vocab_size):,} positions): lower --batch-size")
    chunks = ", or give --chunked-loss so the loss takes a chunk of positions at a time" if could_chunk else ""
    return f"the student's step ran out of memory at {where}, the whole logits at once): lower --batch-size{chunks}"


def _logit_pieces(model, split, input_ids, vocab_size: int, config: TrainConfig, device):
    """(positions, logits) over the batch: all at once from the model's forward, or (a split's)
    one chunk of positions at a time, each chunk's logits made when it is reached."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    if split is None:
        with autocast:
            logits = _logits(model(input_ids))
        yield slice(None), logits
        return
    with autocast:
        hidden = split.hidden_states(input_ids)  # (B, L, H)
    length, columns = input_ids.shape[1], max(1, chunk_positions(vocab_size) // len(input_ids))
    for start in range(0, length, columns):
        piece = slice(start, start + columns)
        with autocast:
            logits = split.head_logits(hidden[:, piece])
        yield piece, logits


@torch.no_grad()
def evaluate(model, data: TokenStoreDataset | None, config: TrainConfig, device, split=None) -> dict:
    """Validation cross-entropy (nats per target token) and perplexity; with a --val-store, the
    share of target positions where the student's top token is the teacher's, and ``val_kl``;
    through ``split`` a chunk of positions at a time, if given.

    val_kl: the KD term per target token at T = 1 whatever --temperature is (``kl_temperature``)."""
    if data is None:
        return {"val_loss": None, "val_ppl": None, "val_agreement": None, "val_kl": None}
    model.eval()
    temperature = kl_temperature(data.targets) if data.targets is not None else 1.0
    total, kl, count, agree = 0.0, 0.0, 0, 0
    for start in range(0, len(data), config.batch_size):
        indices = np.arange(start, min(start + config.batch_size, len(data)))
        batch = {name: value.to(device) for name, value in data.batch(indices, teacher=False).items()}
        next_tokens, targets = next_token_targets(batch["labels"])
        teacher = teacher_top = None
        if data.targets is not None:
            teacher, teacher_top = data.targets.targets_and_top1(data.sequences[indices])
            teacher, teacher_top = teacher.to(device), teacher_top.to(device)
        for piece, logits in _logit_pieces(model, split, batch["input_ids"], data.vocab_size, config, device):
            ce, kd = position_loss_sums(logits, next_tokens[:, piece], targets[:, piece],
                                        None if teacher is None else teacher[:, piece], temperature)
            total, kl = total + ce.item(), kl + kd.item()
            if teacher_top is not None:
                agree += int(((logits.argmax(-1) == teacher_top[:, piece]) & targets[:, piece]).sum())
        count += int(targets.sum())
    if count == 0:
        return {"val_loss": None, "val_ppl": None, "val_agreement": None, "val_kl": None}
    loss, read_teacher = total / count, data.targets is not None
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)),
            "val_agreement": agree / count if read_teacher else None, "val_kl": kl / count if read_teacher else None}


def kl_temperature(targets) -> float:
    """The temperature of ``val_kl``: 1, so that runs at any --temperature compare on the teacher's
    own distribution; a ``sample:K:T`` store's T, the only one its draws estimate the KL at."""
    return targets.sample_temperature or 1.0


def kl_meaning(targets) -> str:
    """What ``val_kl`` is on a store: the KL its stored targets define (``losses/kd.py``: exact from
    dense logits, over the top K and one tail bucket from ``topk:K``, estimated from ``sample:K`` draws)."""
    temperature = kl_temperature(targets)
    scaled = " (times T², as trained)" if temperature != 1.0 else ""
    return (f"KL to it at T = {temperature:g}{scaled} as its stored targets define it "
            f"({targets.codec.name}: {targets.codec.description})")


def _logits(output):
    """A causal LM's logits: the tensor itself, or the ``logits`` of a Hugging Face output."""
    return getattr(output, "logits", output)


def _val_text(record: dict) -> str:
    if record.get("val_loss") is None:
        return "no validation data"
    agreement = record.get("val_agreement")
    teacher = f", agreement with the teacher {agreement:.2%}" if agreement is not None else ""
    return (f"val loss {record['val_loss']:.4f} nats/token (perplexity {record['val_ppl']:.3f}){teacher}"
            f"{_kl_text(record)}")


def _kl_text(record: dict) -> str:
    return f", KL to the teacher {record['val_kl']:.4f} nats/token" if record.get("val_kl") is not None else ""
