"""Open-ended task types the labelled data cannot teach, as documented priors.

The classifier's weights come from multiple-choice questions (MMLU): every training prompt
has lettered options, so nothing in it says what a request to *write code*, *prove* a
statement or *analyse* a trade-off needs. There the learned score is extrapolating, and on
such prompts it says "edge" (digits and symbols even pushed it down, because the cloud
model was graded badly on multiple-choice arithmetic). A small model cannot write a correct
function or proof, so an open-ended request of one of these types gets at least a floor
score that sends it to the cloud under the shipped threshold. Multiple-choice prompts keep
their learned score (7 of the 7,699 development prompts have no detectable options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskType:
    label: str
    """The word the route reason shows (``code task``)."""
    floor: float
    """The least score a request of this type gets."""


CODE_TASK: Final = TaskType(label="code task", floor=0.7)
PROOF_TASK: Final = TaskType(label="proof", floor=0.7)
ANALYSIS_TASK: Final = TaskType(label="analysis", floor=0.65)

_CODE_VERBS = frozenset(
    {"write", "implement", "refactor", "debug", "fix", "optimize", "optimise", "port", "code"}
)
_CODE_NOUNS = frozenset(
    {
        "function", "functions", "class", "method", "script", "program", "code", "python",
        "sql", "query", "javascript", "typescript", "rust", "java", "golang", "bash", "regex",
        "api", "algorithm", "unittest", "tests", "bug", "compiler", "kernel", "endpoint",
    }
)  # fmt: skip
_PROOF_WORDS = frozenset(
    {"prove", "proof", "derive", "derivation", "induction", "theorem", "lemma", "rigorous"}
)
_ANALYSIS_WORDS = frozenset(
    {
        "compare", "comparison", "tradeoffs", "analyze", "analyse", "analysis", "evaluate",
        "architecture", "recommend", "critique", "assess", "justify", "pros",
    }
)  # fmt: skip


def open_ended_task(words: frozenset[str], *, has_code_block: bool) -> TaskType | None:
    """The task type of an open-ended request's last user message, or None.

    ``words`` are its lowercase ASCII words; a fenced code block counts as code.
    """
    if has_code_block or (words & _CODE_VERBS and words & _CODE_NOUNS):
        return CODE_TASK
    if words & _PROOF_WORDS:
        return PROOF_TASK
    if words & _ANALYSIS_WORDS or ("trade" in words and "offs" in words):
        return ANALYSIS_TASK
    return None
