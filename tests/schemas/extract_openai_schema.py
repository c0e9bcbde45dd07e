"""Write ``openai-chat-completions.json``: the chat-completion answer schemas of OpenAI's
published OpenAPI document, verbatim, with everything they reference and nothing else.

Run from the repository root with the path of the full document (see ``README.md`` for
where it comes from)::

    python -m tests.schemas.extract_openai_schema PATH/TO/openai_chat.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOTS = ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "ErrorResponse")
"""What the gateway answers: a completion, a stream chunk, an error."""
OUT = Path(__file__).with_name("openai-chat-completions.json")


def referenced(node: object, schemas: dict[str, object], found: set[str]) -> None:
    """Add to ``found`` every component schema that ``node`` references, transitively."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in found:
                found.add(name)
                referenced(schemas[name], schemas, found)
        for value in node.values():
            referenced(value, schemas, found)
    elif isinstance(node, list):
        for value in node:
            referenced(value, schemas, found)


def main(source: Path) -> None:
    document = json.loads(source.read_text())
    schemas = document["components"]["schemas"]
    found = set(ROOTS)
    for name in ROOTS:
        referenced(schemas[name], schemas, found)
    trimmed = {
        "openapi": document["openapi"],
        "info": document["info"],
        "components": {"schemas": {name: schemas[name] for name in sorted(found)}},
    }
    OUT.write_text(json.dumps(trimmed, indent=2, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(found)} schemas from OpenAPI {document['info']['version']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
