"""``logitcache dump``'s options: one dataclass, the single source of their defaults (the CLI and
pipeline files read them from here). Imports nothing heavy, so ``logitcache --help`` stays fast.

    >>> DumpConfig(store="s.zarr", teacher="cnn", dataset="digits@train").batch_size
    256
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DumpConfig:
    """Everything ``logitcache dump`` takes; the CLI options map one to one."""

    store: str
    teacher: str
    dataset: str
    weights: str | None = None
    split: str | None = None
    transform: str | None = None
    teacher_name: str = "default"
    codec: str = "fp16"
    batch_size: int = 256  # a token dump: at most this many sequences a batch
    batch_tokens: int = 65536  # a token dump: tokens a batch (whole sequences, one at least)
    workers: int = 0
    device: str = "cpu"
    bf16: bool = False
    num_classes: int | None = None
    rows_per_shard: int | None = None
    augment: str | None = None  # a view spec (views/view_specs.py): the teacher sees random views
    views: int | None = None  # views per sample (default 1 with --augment)
    seed: int = 0  # the view draws' seed, and torch's before the teacher is built (its own weights, if any)
    tokenizer: str | None = None  # a token dump (language models): sources/tokenizers.py spec
    seq_len: int | None = None  # positions per stored sequence of a token dump
    generate: bool = False  # the teacher writes a response to each prompt of --dataset (dump/generate.py)
    temperature: float = 1.0  # --generate: sampling temperature (0: greedy)
    top_p: float = 1.0  # --generate: nucleus sampling's mass
    max_new_tokens: int = 64  # --generate: the longest response
    greedy: bool = False  # --generate: the most likely token each step (temperature 0)
    record_view_hashes: bool = False
    features: str | None = None  # NAME=LAYER[:REDUCE],...: teacher features stored beside the logits
    feature_codec: str = "fp16"  # fp16, bf16 or fp32, for every feature
    overwrite: bool = False
    progress: bool = True
    storage_options: dict = field(default_factory=dict)

    @property
    def view_count(self) -> int:
        """Views per sample: 0 for a single-view (unaugmented) dump."""
        return (self.views or 1) if self.augment else 0
