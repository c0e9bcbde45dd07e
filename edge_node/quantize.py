"""``python -m edge_node quantize``: make a GGUF variant with llama.cpp's own quantizer.

    python -m edge_node quantize SRC.gguf --type Q4_0 --output DST.gguf
                                 [--untie-output --output-tensor-type Q4_0] [--threads N]

``--type`` is a llama.cpp file type (``Q4_0``, ``Q4_K_M``, ``Q8_0``, ...: the
``LLAMA_FTYPE_MOSTLY_*`` names); requantizing an already quantized file is allowed (the
only SmolLM2 on this machine is itself a Q4_1, so every variant made from it carries its
rounding too).

``--untie-output`` is for models whose output projection is their token embedding
(SmolLM2: ``token_embd.weight``, Q8_0, 28 M of its 135 M weights). llama.cpp keeps a tied
tensor in a buffer that can serve row lookups, so it is never repacked for the CPU's
matrix kernels, and the output projection, the one matrix every decoded token of every
sequence multiplies, then gains nothing from batching. Untying writes a copy as
``output.weight`` (with the ``gguf`` package, from the dev extra) before quantizing;
with ``--output-tensor-type Q4_0`` that copy is repacked like the other Q4_0 weights. See
docs/edge.md ("Continuous batching") for what it is worth and what it costs.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_EMBEDDING, _OUTPUT = "token_embd.weight", "output.weight"


def _ftype(name: str) -> int:
    from llama_cpp import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if value is None:
        raise argparse.ArgumentTypeError(f"unknown llama.cpp file type {name!r}")
    return int(value)


def _ggml_type(name: str) -> int:
    from llama_cpp import llama_cpp

    value = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if value is None:
        raise argparse.ArgumentTypeError(f"unknown ggml tensor type {name!r}")
    return int(value)


def untie_output(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with the tied token embedding also as output.weight."""
    try:
        import gguf
    except ImportError as exc:  # the dev extra has it; the edge extra does not need it
        raise SystemExit("--untie-output needs the gguf package: pip install gguf") from exc

    reader = gguf.GGUFReader(source)
    names = {tensor.name for tensor in reader.tensors}
    if _OUTPUT in names or _EMBEDDING not in names:
        raise SystemExit(f"{source} has no tied output projection to untie")
    architecture = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, architecture)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by the writer itself
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), kind)
    for tensor in reader.tensors:
        copies = [tensor.name] + ([_OUTPUT] if tensor.name == _EMBEDDING else [])
        for name in copies:
            writer.add_tensor(
                name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(
    source: Path,
    target: Path,
    ftype: int,
    *,
    output_tensor_type: int | None = None,
    threads: int = 0,
) -> None:
    """Run ``llama_model_quantize``; raises RuntimeError when llama.cpp fails."""
    from llama_cpp import llama_cpp

    params: Any = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    if output_tensor_type is not None:
        params.output_tensor_type = output_tensor_type
    partial = target.with_name(target.name + ".partial")
    code = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize failed with {code}")
    partial.replace(target)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_node quantize",
        description="Make a GGUF variant with llama.cpp's quantizer (llama_model_quantize).",
    )
    parser.add_argument("source", type=Path, help="the GGUF to quantize")
    parser.add_argument("--type", required=True, type=_ftype, help="Q4_0, Q4_K_M, Q8_0, ...")
    parser.add_argument("--output", "-o", required=True, type=Path, help="the GGUF to write")
    parser.add_argument(
        "--untie-output",
        action="store_true",
        help="write the tied token embedding also as output.weight (needs the gguf package)",
    )
    parser.add_argument(
        "--output-tensor-type", type=_ggml_type, help="type of output.weight (e.g. Q4_0)"
    )
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"no such file: {args.source}")
    with tempfile.TemporaryDirectory(dir=args.output.parent) as scratch:
        source = args.source
        if args.untie_output:
            source = Path(scratch) / "untied.gguf"
            untie_output(args.source, source)
        quantize(
            source,
            args.output,
            args.type,
            output_tensor_type=args.output_tensor_type,
            threads=args.threads,
        )
    print(f"wrote {args.output} ({args.output.stat().st_size / 2**20:.1f} MiB)")
    return 0
