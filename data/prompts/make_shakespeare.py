"""Make ``data/prompts/shakespeare.jsonl``: prompts for ``dump --generate`` cut from the plays in
data/text/shakespeare, with the plays' own next speech as each prompt's reference answer.

    $ python data/prompts/make_shakespeare.py        # rewrites the file; the same bytes every time

A prompt is one speech as the plays' Markdown writes it (``**SPEAKER**`` then the lines) followed
by the next speaker's name, so a teacher trained on the plays answers in that speaker's voice; the
reference is what that speaker really says. Speeches are taken from the training part of each play
only (its first 90 % of bytes, the ``text:...@train`` split), every 4th pair, at most 64 per play;
a prompt fits 64 bytes and a reference is cut to 64 bytes, so prompt and answer fit a 128-byte
sequence (``--seq-len 128 --max-new-tokens 64``). Standard library only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAYS = HERE.parent / "text" / "shakespeare"
SPEECH = re.compile(r"\*\*(?P<speaker>[A-Z][A-Z .'-]*)\*\*  \n(?P<lines>(?:[^\n]+\n)+)")
PROMPT_BYTES, REFERENCE_BYTES, EVERY, PER_PLAY = 64, 64, 4, 64


def speeches(text: str) -> list[tuple[str, str, int]]:
    """(speaker, its lines, byte offset) of every speech, in order."""
    return [(m["speaker"], m["lines"], len(text[:m.start()].encode("utf-8"))) for m in SPEECH.finditer(text)]


def records(play: Path) -> list[dict]:
    text = play.read_text(encoding="utf-8")
    train_end = len(text.encode("utf-8")) - len(text.encode("utf-8")) // 10  # the @train split's last byte
    found = speeches(text)
    out = []
    for index, ((speaker, lines, _), (answerer, answer, at)) in enumerate(zip(found, found[1:])):
        prompt = f"**{speaker}**  \n{lines}\n**{answerer}**  \n"
        reference = answer.encode("utf-8")[:REFERENCE_BYTES].decode("utf-8", errors="ignore")
        if index % EVERY or len(prompt.encode("utf-8")) > PROMPT_BYTES or at + len(answer) >= train_end:
            continue
        out.append({"key": f"{play.name}#{at}", "prompt": prompt, "reference": reference})
        if len(out) == PER_PLAY:
            break
    return out


def main() -> None:
    rows = [row for play in sorted(PLAYS.glob("*.md")) for row in records(play)]
    with open(HERE / "shakespeare.jsonl", "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} prompts -> {HERE / 'shakespeare.jsonl'}")


if __name__ == "__main__":
    main()
