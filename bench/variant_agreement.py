"""How far a quantization variant's greedy answers stay with a reference model's.

    python bench/variant_agreement.py VARIANT.gguf [VARIANT.gguf ...]
                                      [--reference PATH] [--tokens 48] [--n-threads 1]

For a fixed set of 16 chat prompts, each model decodes ``--tokens`` tokens greedily
(llama.cpp in-process, one sequence); per variant it prints how many answers are
token-for-token the reference's and the mean share of each answer's tokens before it
first differs from the reference. The reference defaults to the shipped SmolLM2 Q4_1,
which is itself quantized: agreement with it says how much a variant changes what the
node answers, not how close either is to the unquantized model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CHAT_PROMPTS, agreement, greedy
from edge_node.model import load_model
from edge_node.schema import PromptMessage
from edge_node.settings import Settings, default_model_path

PROMPTS = CHAT_PROMPTS[:16]


def answers(path: Path, args: argparse.Namespace) -> list[list[int]]:
    settings = Settings(model_path=path, n_ctx=512, n_threads=args.n_threads, parallel=1)
    model = load_model(settings)
    try:
        chats = [model.prompt_tokens((PromptMessage(role="user", content=p),)) for p in PROMPTS]
        return [greedy(model, chat, args.tokens) for chat in chats]
    finally:
        model.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, default=default_model_path())
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--n-threads", type=int, default=1)
    args = parser.parse_args()
    reference = answers(args.reference, args)
    print(f"reference {args.reference.name}: {len(PROMPTS)} prompts, {args.tokens} tokens")
    for variant in args.variants:
        got = answers(variant, args)
        same, share = agreement(reference, got)
        print(
            f"{variant.name}: identical answers {same}/{len(PROMPTS)}, "
            f"mean share before the first difference {share:.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
