"""GGUF files in: dequantized through transformers once, cached as safetensors keyed by the file's sha256."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rosi._fs import atomic_directory, hash_files, regular_file
from rosi.errors import CorruptWeightsError, NotCausalLMError, first_line
from rosi.model import packaged

HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata key count
# The smallest a metadata entry (key length, a one-byte key, type, a one-byte value) and a tensor
# entry (name length, a one-byte name, dimension count, one dimension, type, offset) can be.
MIN_KV_BYTES, MIN_TENSOR_BYTES = 8 + 1 + 4 + 1, 8 + 1 + 4 + 8 + 4 + 8


def gguf_cache_folder(path: Path, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Where a GGUF file's conversion is cached: keyed by the file's sha256, so any change re-converts."""
    regular_file(path, "GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CorruptWeightsError(f"{path} is not a GGUF file (no GGUF magic bytes); re-download it")
    sha = hash_files([path])
    return (cache_dir or packaged.cache_root()) / "gguf" / sha[:32], sha


def check_gguf(path: Path) -> None:
    """Check a GGUF file's header before transformers parses it: the magic, a version rosi reads,
    and counts of metadata keys and tensors that the file can hold (the loader then reads tables
    that are at most as long as the file)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            magic, version, n_tensors, n_kv = HEADER.unpack(f.read(HEADER.size))
    except struct.error:
        raise CorruptWeightsError(f"{path} is truncated: shorter than a GGUF header; re-download it") from None
    if magic != b"GGUF" or version not in (2, 3):
        raise CorruptWeightsError(f"{path}: GGUF version {version} (rosi reads versions 2 and 3); re-download or re-convert it")
    if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_BYTES > size - HEADER.size:
        raise CorruptWeightsError(
            f"{path} is damaged: its header lists {n_kv} metadata keys and {n_tensors} tensors, more than the file can hold"
        )


def convert_gguf(path: Path, cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """Dequantize a GGUF file through transformers once; cache it as safetensors keyed by its sha256.

    Returns the cached folder and the file's sha256.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    path = Path(path)
    folder, sha = gguf_cache_folder(path, cache_dir)
    if (folder / "rosi_source.json").is_file():
        return folder, sha
    check_gguf(path)
    log(f"rosi: converting {path.name} from GGUF to safetensors (once; cached in {folder})")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
    except ValueError as e:
        if "architecture" in str(e).lower():
            raise NotCausalLMError(f"{path}: transformers cannot load this GGUF architecture ({first_line(str(e))})") from None
        raise CorruptWeightsError(f"{path}: cannot read this GGUF file ({first_line(str(e))})") from None
    except Exception as e:  # noqa: BLE001 - the gguf reader under transformers raises many types (IndexError, OverflowError, ...) for damaged files
        raise CorruptWeightsError(f"{path} is unreadable or truncated ({type(e).__name__}: {first_line(str(e))}); re-download it") from None
    # Dequantized weights are plain tensors; the quantizer state only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # the cache folder is rosi's own (named by the file's sha256): an incomplete one is replaced
    with atomic_directory(folder, overwrite=True, owned=lambda p: True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "rosi_source.json").write_text(json.dumps({"gguf": str(path), "sha256": sha, "bytes": path.stat().st_size}, indent=2))
    return folder, sha
