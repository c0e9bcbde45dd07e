"""The locked test split of the routing dev set (docs/classifier.md, "Evaluation protocol").

    .venv/bin/python bench/routing_protocol.py [--data FILE] [--write]

A pure function of the dev file's content and a fixed salt, so anyone can recompute it:

- the 7 subjects with the smallest ``sha256(SALT + "/subject/" + name)`` are locked whole
  (kind ``unseen_subjects``);
- of the other subjects, each prompt whose ``int(sha256(SALT + "/prompt/" + text)[:8], 16)
  % 5 == 0`` is locked (kind ``new_prompts``): hashing the text keeps duplicates together;
- a remaining row whose text also occurs among the locked subjects' prompts is dropped;
- the rest is the development set.

``bench/routing_protocol.json`` records the outcome (subjects, counts, the file's SHA-256);
:func:`load_split` recomputes the split and refuses to go on if it differs from the record,
so the locked rows cannot drift silently. ``--write`` (re)writes the record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "routing-dev" / "mmlu_dev.jsonl"
RECORD = Path(__file__).resolve().parent / "routing_protocol.json"

SALT: Final = "gateway-routing-locked-v1"
LOCKED_SUBJECTS: Final = 7
PROMPT_MODULUS: Final = 5

Part = Literal["dev", "unseen_subjects", "new_prompts", "dropped"]
KINDS: Final = ("unseen_subjects", "new_prompts")
KIND_TITLES: Final = {
    "unseen_subjects": "unseen subjects",
    "new_prompts": "new prompts, seen subjects",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    data_sha256: str
    locked_subjects: tuple[str, ...]
    parts: tuple[Part, ...]
    """One per row of the dev file, in file order."""

    def rows(self, part: Part) -> list[int]:
        return [i for i, p in enumerate(self.parts) if p == part]

    def summary(self) -> dict[str, object]:
        return {
            "salt": SALT,
            "data_sha256": self.data_sha256,
            "locked_subjects": list(self.locked_subjects),
            "rows": {part: self.parts.count(part) for part in ("dev", *KINDS, "dropped")},
        }


def _digest(kind: str, text: str) -> str:
    return hashlib.sha256(f"{SALT}/{kind}/{text}".encode()).hexdigest()


def compute_split(raw: bytes) -> Split:
    """The split of a dev file given as its bytes (JSON Lines: prompt, domain, ...)."""
    # split("\n"), not splitlines(): prompts contain U+2028, which splitlines() breaks on.
    rows = [json.loads(line) for line in raw.decode("utf-8").split("\n") if line.strip()]
    subjects = sorted({str(r["domain"]) for r in rows})
    locked = tuple(sorted(subjects, key=lambda s: _digest("subject", s))[:LOCKED_SUBJECTS])
    locked_texts = {str(r["prompt"]) for r in rows if r["domain"] in locked}
    parts: list[Part] = []
    for r in rows:
        text = str(r["prompt"])
        if r["domain"] in locked:
            parts.append("unseen_subjects")
        elif int(_digest("prompt", text)[:8], 16) % PROMPT_MODULUS == 0:
            parts.append("new_prompts")
        elif text in locked_texts:
            parts.append("dropped")
        else:
            parts.append("dev")
    return Split(
        data_sha256=hashlib.sha256(raw).hexdigest(),
        locked_subjects=tuple(sorted(locked)),
        parts=tuple(parts),
    )


def load_split(data: Path = DEFAULT_DATA) -> Split:
    """The split of ``data``, checked against the committed record."""
    split = compute_split(data.read_bytes())
    record = json.loads(RECORD.read_text(encoding="utf-8"))
    if record != split.summary():
        raise SystemExit(
            f"{data}: the split differs from {RECORD.name} (another dev file, or the rule "
            f"changed): {json.dumps(split.summary())}"
        )
    return split


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--write", action="store_true", help=f"write {RECORD.name}")
    args = parser.parse_args(argv)
    summary = compute_split(args.data.read_bytes()).summary()
    text = json.dumps(summary, indent=1) + "\n"
    if args.write:
        RECORD.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
