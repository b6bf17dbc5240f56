"""What a training run says when it ends: ``TrainSummary``, worded by its task's subclass.

    >>> summary = train(config)                      # an ImageSummary or an LMTrainSummary
    >>> print("\\n".join(summary.lines()))            # trained 30 epochs in 1.1 s -> RUN, then the results
    >>> summary.record()                             # what RUN/summary.json holds
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainSummary:
    """The closing figures of one run; ``results`` (a task's subclass) words its last and best epochs."""

    out: str
    epochs: int
    seconds: float
    last: dict
    best: dict
    history: list = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"trained {self.epochs} epochs in {self.seconds:.1f} s -> {self.out}", *self.results()]

    def results(self) -> list[str]:
        """The lines after the header: each task's subclass words its metrics (none here)."""
        return []

    def record(self) -> dict:
        """summary.json: written last, so a run with one is complete."""
        return {"complete": True, "epochs": self.epochs, "seconds": round(self.seconds, 3),
                "last": self.last, "best": self.best}
