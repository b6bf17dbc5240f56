"""Progress bars that redraw at a rate a terminal (or a log file) can take, and show the rate.

    >>> bar = progress_bar(loader, desc="epoch 1/30", unit="step", enabled=True)   # "... 41.2 step/s"
    >>> for batch in bar:
    ...     bar.set_postfix(loss="0.1234", refresh=False)   # shown at the next redraw, not forcing one

tqdm redraws at most every ``mininterval`` seconds, except when ``set_postfix`` forces a redraw
(its default), which drew every step with a count one behind. Here the postfix never forces one;
a terminal is redrawn twice a second, and stderr that is not a terminal (a log file, a pipe,
CI) every 10 seconds, since every redraw there is a line that stays. There, a bar is not drawn
when its loop starts (no "0%| | 0/23" line for every epoch) and ends as one whole line with its
rate (a cleared bar would be a line of blanks in a file).
"""

from __future__ import annotations

import sys

TERMINAL_SECONDS = 0.5
LOG_SECONDS = 10.0


def progress_bar(iterable=None, *, enabled: bool, desc: str, unit: str, total: int | None = None,
                 leave: bool = True):
    """A tqdm bar on stderr, or a silent one when not ``enabled``."""
    from tqdm import tqdm

    terminal = sys.stderr.isatty()
    interval = TERMINAL_SECONDS if terminal else LOG_SECONDS
    kind = tqdm if terminal else _log_bar(tqdm)
    return kind(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave or not terminal,
                delay=0 if terminal else interval, mininterval=interval, maxinterval=max(interval, 10.0),
                dynamic_ncols=True)


def _log_bar(tqdm):
    """tqdm for a log: the start is not drawn (``delay``), the end always is, whole."""

    class LogBar(tqdm):
        def close(self):
            self.delay = 0  # tqdm skips the closing line of a bar it never drew
            super().close()

    return LogBar
