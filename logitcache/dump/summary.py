"""What a dump says when it ends: samples, rate, bytes on disk, the teacher's own accuracy and the
stored targets' agreement with it (``lines()``); a token dump: tokens, bytes per token, the teacher's
perplexity (``TokenDumpSummary``).

    >>> print("\n".join(dump(config).lines()))
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DumpSummary:
    store: str
    teacher_name: str
    samples: int
    samples_this_run: int
    seconds: float
    bytes_on_disk: int
    num_classes: int
    codec: str
    top1: float  # the stored targets' (the teacher's own are in teacher_outputs)
    top5: float
    resumed_shards: int
    views: int = 0
    view_bytes: int = 0  # view_params and view_hashes, beside the logits' bytes_on_disk
    teacher_outputs: dict | None = None  # the teacher's own top-1/top-5 and the targets' agreement (run record)

    @property
    def rows(self) -> int:
        """Teacher outputs stored: samples x views."""
        return self.samples * max(self.views, 1)

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes_on_disk / self.samples

    @property
    def ratio_vs_fp32(self) -> float:
        return self.rows * self.num_classes * 4 / max(self.bytes_on_disk, 1)

    def lines(self) -> list[str]:
        rate = self.samples_this_run / self.seconds if self.seconds else float("nan")
        resumed = f" (resumed: {self.resumed_shards} shards were already written)" if self.resumed_shards else ""
        views = f" x {self.views} views" if self.views else ""
        per_view = f", {self.bytes_on_disk / self.rows:.1f} bytes/view" if self.views else ""
        return [
            f"dumped {self.samples} samples{views} x {self.num_classes} classes into {self.store} "
            f"[teacher {self.teacher_name!r}, codec {self.codec}]{resumed}",
            f"  {self.samples_this_run} samples in {self.seconds:.1f} s = {rate:.0f} samples/s",
            f"  {self.bytes_on_disk} bytes on disk = {self.bytes_per_sample:.1f} bytes/sample{per_view} "
            f"({self.ratio_vs_fp32:.2f}x smaller than raw fp32)",
            *self._accuracy_lines(),
        ] + ([f"  view parameters: {self.view_bytes} bytes = {self.view_bytes / self.rows:.1f} bytes/view"]
             if self.views else [])

    def _accuracy_lines(self) -> list[str]:
        """The teacher's own accuracy (from its outputs, before encoding) and, apart, the stored
        targets': their accuracy and their top-1 agreement with the teacher's."""
        views = " (all views)" if self.views else ""
        own = self.teacher_outputs
        if own is None:  # every shard written before a resume, or a store from before this was counted
            return [f"  stored targets: top-1 {self.top1:.2%}, top-5 {self.top5:.2%} on the dumped labels{views}"]
        rows = "" if own["rows"] == self.rows else f", on the {own['rows']} rows this run computed (it resumed)"
        return [f"  teacher top-1 {own['top1']:.2%}, top-5 {own['top5']:.2%} on the dumped labels{views} (its own "
                f"outputs, before encoding{rows})",
                f"  stored targets: top-1 {self.top1:.2%} on the labels; top-1 agrees with the teacher's on "
                f"{own['agreement']:.2%}"]


@dataclass
class TokenDumpSummary:
    """What a token dump says: sequences, tokens, rate, bytes per token, the teacher's perplexity."""

    store: str
    teacher_name: str
    sequences: int
    seq_len: int
    tokens: int  # real tokens (padding excluded)
    positions_this_run: int
    seconds: float
    bytes_on_disk: int
    vocab_size: int
    codec: str
    metrics: dict  # targets, nll, perplexity, top1, mass_stored (dump/token_dump.py token_metrics)
    resumed_shards: int
    generated: int | None = None  # dump --generate: the response tokens the teacher wrote this run

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_on_disk / max(self.tokens, 1)

    def lines(self) -> list[str]:
        rate = self.positions_this_run / self.seconds if self.seconds else float("nan")
        resumed = f" (resumed: {self.resumed_shards} shards were already written)" if self.resumed_shards else ""
        metrics, lines = self.metrics, [
            f"dumped {self.sequences} sequences x {self.seq_len} positions ({self.tokens} tokens) x {self.vocab_size} "
            f"vocabulary into {self.store} [teacher {self.teacher_name!r}, codec {self.codec}]{resumed}",
            f"  {self.positions_this_run} positions in {self.seconds:.1f} s = {rate:.0f} tokens/s" if self.generated is None
            else f"  the teacher wrote {self.generated} response tokens in {self.seconds:.1f} s (with the store's "
                 f"writes) = {self.generated / self.seconds if self.seconds else float('nan'):.0f} tokens/s",
            f"  {self.bytes_on_disk} bytes on disk = {self.bytes_per_token:.1f} bytes/token "
            f"({self.tokens * self.vocab_size * 4 / max(self.bytes_on_disk, 1):.0f}x smaller than raw fp32)",
        ]
        if metrics.get("targets"):
            lines.append(f"  teacher perplexity {metrics['perplexity']:.3f} ({metrics['nll']:.4f} nats/token), next-token "
                         f"top-1 {metrics['top1']:.2%} over {metrics['targets']} targets; the stored targets hold "
                         f"{metrics['mass_stored']:.2%} of its probability mass")
        return lines
