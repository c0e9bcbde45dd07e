"""What the command line prints once the stack is ready: where everything runs, how to try it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from scripts.stack.startup import Stack


def banner(stack: Stack, seconds: float, *, session_tag: str | None = None) -> str:
    """Where everything runs, and a curl line and an openai snippet to try the gateway.

    The two examples use sessions of their own, new at each start (``demo-curl-<tag>``,
    ``demo-sdk-<tag>``): the second does not answer in the context of the first, and a
    restarted stack (whose Redis keeps sessions) does not grow yesterday's conversation.
    """
    tag = session_tag or secrets.token_hex(3)
    curl_session, sdk_session = f"demo-curl-{tag}", f"demo-sdk-{tag}"
    url = stack.gateway_url
    redis_note = "started by the stack" if stack.redis_started else "already running"
    rows = [
        f"  gateway  {url}",
        f"  edge     {stack.edge_url}  model {stack.edge_model} (llama.cpp)",
    ]
    if stack.config.external_cloud is not None:
        rows.append(
            f"  cloud    {stack.cloud_url}  model {stack.cloud_model} (not started by the stack)"
        )
    elif stack.cloud_url:
        rows.append(
            f"  cloud    {stack.cloud_url}  model {stack.cloud_model} (vLLM, {stack.cloud_build})"
        )
    else:
        rows.append("  cloud    off (--no-cloud): every request runs on the edge")
    rows.append(f"  redis    {stack.redis_url} ({redis_note})")
    rows.append(f"  logs     {_short(stack.config.logs)}/{{gateway,edge,cloud,redis}}.log")
    body = json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "Say hello in French."}]}
    )
    # The keys themselves are not printed: terminals end up in logs and screenshots.
    keyed = bool(os.environ.get("GATEWAY_API_KEYS", "").strip())
    auth = ' -H "authorization: Bearer $API_KEY"' if keyed else ""
    api_key = 'os.environ["API_KEY"]' if keyed else '"unused"'
    lines = [
        f"\nhybrid gateway ready after {seconds:.0f} s: {url}",
        *rows,
        "\ncurl (the response headers name the tier, node and routing reason):",
        f"  curl -si {url}/v1/chat/completions -H 'content-type: application/json' \\",
        f"    -H 'x-session-id: {curl_session}'{auth} -d '{body}'",
        "\nopenai SDK (pip install openai):",
        "  import os" if keyed else None,
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{url}/v1", api_key={api_key})',
        "  raw = client.chat.completions.with_raw_response.create(",
        '      model="auto",  # or "edge" / "cloud" to pin a tier',
        '      messages=[{"role": "user", "content": "Explain TCP slow start."}],',
        f'      extra_headers={{"x-session-id": "{sdk_session}"}})',
        '  print(raw.headers["x-gateway-tier"], raw.parse().choices[0].message.content)',
        "\n(GATEWAY_API_KEYS is set: export API_KEY=<one of its keys> first)" if keyed else None,
        "\nA process that dies by itself is reported and restarted; the others keep running.",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(line for line in lines if line is not None)


def _short(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)
