"""YAML loading that remembers the line of every key, so errors can name it.

Bounded by design, because the text may be anything an operator (or an attacker who can
write the file) puts there: nesting deeper than ``max_depth``, more than ``max_nodes``
values once aliases are expanded (a "billion laughs" file is 4 KB) and parsing past
``timeout_s`` are :class:`YAMLLimitError`; an alias inside its own anchor and a control
character are plain :class:`YAMLSyntaxError`. None of them is a ``RecursionError`` or a
process that eats its memory cap, and every error carries its line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

import yaml


@dataclass(frozen=True, slots=True, kw_only=True)
class YAMLLimits:
    """What one document may cost; a policy file needs a small fraction of each."""

    max_depth: int = 64
    """Nesting of mappings and lists, counted through aliases too."""
    max_nodes: int = 20_000
    """Values and keys, counted as written and again as expanded through aliases."""
    timeout_s: float = 4.0
    """Parsing time; checked at every node, so a single long scalar can overrun it a little
    (the file's size bounds that)."""


DEFAULT_LIMITS: Final = YAMLLimits()


@dataclass(slots=True)
class LocatedDocument:
    """Plain Python data plus the 1-based line where each dotted path starts."""

    data: object
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, path: str) -> int | None:
        """Line of ``path`` or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""


class YAMLSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class YAMLLimitError(YAMLSyntaxError):
    """Valid YAML, perhaps, but deeper, larger or slower than :class:`YAMLLimits` allows."""


def load_located(text: str, *, limits: YAMLLimits = DEFAULT_LIMITS) -> LocatedDocument:
    """Parse one YAML document with the safe loader, recording key lines."""
    loader: _BoundedLoader | None = None
    try:
        # The reader rejects control characters here, in the constructor.
        loader = _BoundedLoader(text, limits)
        root = loader.get_single_node()
        doc = LocatedDocument(data=None)
        if root is not None:
            doc.data = _Builder(loader, limits).build(root, "", doc.lines)
        return doc
    except yaml.reader.ReaderError as exc:
        at_line, column = _line_and_column(text, exc.position)
        raise YAMLSyntaxError(
            f"control character U+{exc.character:04X} at column {column} is not allowed", at_line
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YAMLSyntaxError(f"{exc.problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(str(exc), None) from exc
    finally:
        if loader is not None:
            loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader whose composer counts nodes, depth and time as it goes."""

    def __init__(self, text: str, limits: YAMLLimits) -> None:
        super().__init__(text)
        self._limits = limits
        self._deadline = time.monotonic() + limits.timeout_s
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # shares a node: the builder counts it
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # stubs lack it
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        self._nodes += 1
        if self._nodes > self._limits.max_nodes:
            raise YAMLLimitError(f"more than {self._limits.max_nodes} values", line)
        if self._depth >= self._limits.max_depth:
            raise YAMLLimitError(f"nested deeper than {self._limits.max_depth} levels", line)
        if time.monotonic() > self._deadline:
            raise YAMLLimitError(f"parsing took longer than {self._limits.timeout_s:g} s", line)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Turns the node graph into plain data, expanding aliases within the limits."""

    def __init__(self, loader: yaml.SafeLoader, limits: YAMLLimits) -> None:
        self._loader = loader
        self._limits = limits
        self._nodes = 0
        self._open: set[int] = set()  # ids of the collections being built: an alias cycle

    def build(self, node: yaml.Node, path: str, lines: dict[str, int]) -> object:
        line = node.start_mark.line + 1
        lines.setdefault(path, line)
        self._nodes += 1
        if self._nodes > self._limits.max_nodes:
            raise YAMLLimitError(
                f"more than {self._limits.max_nodes} values once aliases are expanded", line
            )
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if id(node) in self._open:
            raise YAMLSyntaxError("an alias refers to its own anchor (a recursive alias)", line)
        if len(self._open) >= self._limits.max_depth:
            raise YAMLLimitError(f"nested deeper than {self._limits.max_depth} levels", line)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, lines)
            if isinstance(node, yaml.SequenceNode):
                return [
                    self.build(item, f"{path}[{index}]", lines)
                    for index, item in enumerate(node.value)
                ]
            raise YAMLSyntaxError(f"unexpected YAML node {type(node).__name__}", line)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str, lines: dict[str, int]) -> object:
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YAMLSyntaxError(
                    "a key must be a plain name, not a list or mapping",
                    key_node.start_mark.line + 1,
                )
            # Keys are names, so take the scalar's text: YAML 1.1 would turn `on:` into True.
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            lines[child] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, child, lines)
        return result

    def _scalar(self, node: yaml.ScalarNode) -> object:
        try:
            return self._loader.construct_object(node, deep=True)
        except (ValueError, ArithmeticError) as exc:
            # A resolver match that Python refuses: `2001-13-01`, `!!int x`, 5,000 digits.
            raise YAMLSyntaxError(
                f"cannot read the value {_preview(node.value)}: {exc}", node.start_mark.line + 1
            ) from exc


def _line_and_column(text: str, position: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
