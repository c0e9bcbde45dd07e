"""YAML loading that remembers the line of every key, so errors can name it."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml


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


def load_located(text: str) -> LocatedDocument:
    """Parse one YAML document with the safe loader, recording key lines."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        doc = LocatedDocument(data=None)
        doc.data = _build(loader, root, "", doc.lines) if root is not None else None
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YAMLSyntaxError(f"{exc.problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise YAMLSyntaxError(str(exc), None) from exc
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: str, lines: dict[str, int]) -> object:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            # Keys are names, so take the scalar's text: YAML 1.1 would turn `on:` into True.
            if isinstance(key_node, yaml.ScalarNode):
                key = str(key_node.value)
            else:
                key = str(loader.construct_object(key_node, deep=True))
            child = f"{path}.{key}" if path else key
            lines[child] = key_node.start_mark.line + 1
            result[key] = _build(loader, value_node, child, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, f"{path}[{index}]", lines) for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
