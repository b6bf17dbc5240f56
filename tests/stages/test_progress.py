"""Progress bars in a log file (stderr not a terminal): no line for a short loop, whole lines for a long one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOP = """
import time, logitcache.progress as progress
progress.LOG_SECONDS = {delay}
for _ in progress.progress_bar(range(23), enabled=True, desc="epoch 1/30", unit="step", leave=False):
    time.sleep({step})
"""


def stderr_of(delay: float, step: float) -> str:
    done = subprocess.run([sys.executable, "-c", LOOP.format(delay=delay, step=step)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_short_loop_writes_one_whole_line_to_a_log():
    lines = [line for line in stderr_of(delay=10.0, step=0.0).replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1 and "23/23" in lines[0] and "step/s" in lines[0]


def test_a_long_loop_leaves_whole_lines_and_no_empty_bar():
    text = stderr_of(delay=0.2, step=0.02)
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and "23/23" in lines[-1]
    assert not any("0/23" in line and "| 0/23" in line for line in lines)
