"""The keyword sets the marker features count (:mod:`gateway.routing.features`): a
request's lowercase words are intersected with each set, one C-speed set operation."""

from __future__ import annotations

MATH_WORDS = frozenset(
    (  # noqa: SIM905 (a word list, not one word per line)
        "equation equations solve integral derivative probability theorem prove matrix sum "
        "product function polynomial calculate compute value variable root roots log ratio "
        "expected variance mean median integer integers prime divisible"
    ).split()
)
CODE_WORDS = frozenset(
    [
        "def",
        "return",
        "import",
        "class",
        "public",
        "static",
        "void",
        "int",
        "printf",
        "println",
        "lambda",
        "const",
        "var",
        "function",
        "null",
        "elif",
        "struct",
        "include",
        "async",
        "await",
    ]
)
REASONING_WORDS = frozenset(
    [
        "why",
        "explain",
        "prove",
        "justify",
        "derive",
        "analyze",
        "analyse",
        "compare",
        "evaluate",
        "reason",
        "reasoning",
        "implies",
        "implication",
        "infer",
        "inference",
        "argument",
        "therefore",
        "hence",
        "assume",
        "assumption",
    ]
)
NEGATION_WORDS = frozenset(
    ["not", "except", "false", "incorrect", "least", "never", "unlikely", "neither"]
)
INSTRUCTION_WORDS = frozenset(
    [
        "write",
        "summarize",
        "summarise",
        "translate",
        "rewrite",
        "draft",
        "list",
        "outline",
        "generate",
        "create",
        "implement",
        "design",
        "refactor",
        "debug",
        "fix",
        "optimize",
    ]
)


__all__ = ["CODE_WORDS", "INSTRUCTION_WORDS", "MATH_WORDS", "NEGATION_WORDS", "REASONING_WORDS"]
