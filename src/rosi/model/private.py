"""Move a loaded model's weights out of the memory-mapped checkpoint into private memory.

transformers maps safetensors files into memory on the CPU, and a parameter stored in the file's
dtype is a view of that mapping. The mapping's pages count in the process's resident memory once
touched, and they stay resident until the last view of the file is gone. rosi edits residual
writers in place (a first write to a mapped page faults and copies it: seconds for a 0.5B model),
so the writers need private copies; but copying them out of the mapping leaves both the copy and
the mapped pages resident: a second copy of every writer (about 1 GB for a 0.5B model in float32).

So every parameter and buffer that is a view of the file gets its own memory, filled with
ordinary reads of the file (which go through the page cache, not the process's resident memory),
and once none is left the mapping is unmapped: the weights are resident once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

import torch
from torch import nn

READ_CHUNK = 64 * 2**20  # bytes read at a time

# safetensors' dtype names (the ones torch has)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file."""

    path: Path
    offset: int  # from the start of the file
    nbytes: int
    dtype: torch.dtype | None  # None: a dtype torch does not have
    shape: tuple[int, ...]

    def matches(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` holds exactly these bytes' type and shape (a plain load of them)."""
        return self.dtype == tensor.dtype and self.shape == tuple(tensor.shape)

    def read(self, f: BufferedReader) -> torch.Tensor:
        """The tensor, read from the open file ``f`` into new memory of torch's own, through a
        small reused buffer (a tensor that numpy shares memory with can no longer be told from a
        mapped one by :func:`mapped`)."""
        assert self.dtype is not None
        out = torch.empty(self.nbytes, dtype=torch.uint8)
        buffer = memoryview(bytearray(min(READ_CHUNK, self.nbytes)))
        f.seek(self.offset)
        done = 0
        while done < self.nbytes:
            n = f.readinto(buffer[: self.nbytes - done])
            if not n:
                raise OSError(f"{self.path} ended inside a tensor's data")
            out[done : done + n] = torch.frombuffer(buffer, dtype=torch.uint8, count=n)
            done += n
        return out.view(self.dtype).reshape(self.shape)


def stored_tensors(files: Iterable[Path]) -> dict[str, StoredTensor]:
    """Every tensor of the safetensors ``files`` (checked by :func:`rosi.model.loading.check_safetensors`
    before the model was loaded), by name."""
    out = {}
    for path in files:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(x) for x in entry["data_offsets"])
            shape = tuple(int(d) for d in entry["shape"])
            out[name] = StoredTensor(path, 8 + n + start, stop - start, _DTYPES.get(entry["dtype"]), shape)
    return out


def mapped(tensor: torch.Tensor) -> bool:
    """Whether a CPU tensor lives in memory torch did not allocate (a view of a mapped file: such
    storage cannot be resized)."""
    return tensor.device.type == "cpu" and not tensor.untyped_storage().resizable()


@torch.no_grad()
def own_memory(model: nn.Module, files: Iterable[Path]) -> None:
    """Give every parameter and buffer of ``model`` that is a view of a mapped file its own memory:
    read from the checkpoint ``files`` where it is one of their tensors as stored, else copied
    (a tensor the loader renamed or reshaped). The values are the same bytes either way."""
    stored = stored_tensors(files)
    handles: dict[Path, BufferedReader] = {}
    fresh: dict[int, torch.Tensor] = {}  # by the mapped tensor's id: a tensor shared by several modules stays shared
    try:
        for module, attribute, name, tensor in _mapped_tensors(model):
            if id(tensor) not in fresh:
                entry = stored.get(name)
                if entry is not None and entry.matches(tensor):
                    f = handles.get(entry.path) or handles.setdefault(entry.path, open(entry.path, "rb"))  # noqa: SIM115 - closed below
                    fresh[id(tensor)] = entry.read(f)
                else:
                    fresh[id(tensor)] = tensor.clone()
            _swap(module, attribute, fresh[id(tensor)])
    finally:
        for f in handles.values():
            f.close()


def _mapped_tensors(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, torch.Tensor]]:
    """(module, attribute, full name, tensor) of each parameter and buffer that is a view of a
    mapped file, listed up front (the caller replaces them)."""
    found = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attribute, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None and mapped(tensor):
                found.append((module, attribute, f"{module_name}.{attribute}" if module_name else attribute, tensor))
    return iter(found)


def _swap(module: nn.Module, attribute: str, fresh: torch.Tensor) -> None:
    """Point a parameter (every module that shares it included) or a buffer at ``fresh``."""
    if attribute in module._parameters:
        param = module._parameters[attribute]
        assert param is not None
        param.data = fresh
    else:
        module._buffers[attribute] = fresh
