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

A load in another dtype than the file's is the same, converted as read: transformers converting
each tensor while it loads reads every mapped page, and they all stay resident beside the
converted weights (a peak of 4.18 GB for a 0.5B model in bfloat16 from float32, 1.26 GB of
weights); loaded in the file's dtype the weights are views of the mapping, untouched, and
:func:`own_memory` converts each one a buffer at a time while reading it (a peak of 1.84 GB).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any, BinaryIO

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

    def read(self, f: BufferedReader, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor, read from the open file ``f`` into new memory of torch's own, through a
        small reused buffer (a tensor that numpy shares memory with can no longer be told from a
        mapped one by :func:`mapped`). ``dtype``: converted to it a buffer at a time as it is read
        (``Tensor.copy_``'s rounding, the one ``Tensor.to`` uses: the same values as converting
        the whole tensor), so the tensor is never whole in memory in its stored dtype."""
        assert self.dtype is not None
        size = self.dtype.itemsize
        convert = dtype is not None and dtype != self.dtype
        out = torch.empty(self.nbytes // size, dtype=dtype if convert else self.dtype)
        target = out if convert else out.view(torch.uint8)
        unit = size if convert else 1  # bytes per element of ``target``
        buffer = memoryview(bytearray(min(READ_CHUNK - READ_CHUNK % size, self.nbytes)))
        f.seek(self.offset)
        done = 0
        while done < self.nbytes:
            want = min(len(buffer), self.nbytes - done)
            got = 0
            while got < want:  # a whole number of elements at a time
                n = f.readinto(buffer[got:want])
                if not n:
                    raise OSError(f"{self.path} ended inside a tensor's data")
                got += n
            source = torch.frombuffer(buffer, dtype=self.dtype if convert else torch.uint8, count=want // unit)
            target[done // unit : (done + want) // unit].copy_(source)
            done += want
        return out.reshape(self.shape)


def read_header(f: BinaryIO) -> tuple[int, dict[str, Any]]:
    """An open safetensors file's header, read from its start: where its data begins (every
    tensor's ``data_offsets`` count from there) and the header itself."""
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n, json.loads(f.read(n))


def stored_tensors(files: Iterable[Path]) -> dict[str, StoredTensor]:
    """Every tensor of the safetensors ``files`` (checked by :func:`rosi.model.loading.check_safetensors`
    before the model was loaded), by name."""
    out = {}
    for path in files:
        with open(path, "rb") as f:
            data, header = read_header(f)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(x) for x in entry["data_offsets"])
            shape = tuple(int(d) for d in entry["shape"])
            out[name] = StoredTensor(path, data + start, stop - start, _DTYPES.get(entry["dtype"]), shape)
    return out


def mapped(tensor: torch.Tensor) -> bool:
    """Whether a CPU tensor lives in memory torch did not allocate (a view of a mapped file: such
    storage cannot be resized)."""
    return tensor.device.type == "cpu" and not tensor.untyped_storage().resizable()


class Unconvertible(Exception):
    """A loaded model that :func:`own_memory` cannot bring to the dtypes asked for with the values a
    load at them would have given."""


@torch.no_grad()
def own_memory(model: nn.Module, files: Iterable[Path], dtypes: Mapping[str, torch.dtype] | None = None) -> None:
    """Give every parameter and buffer of ``model`` that is a view of a mapped file its own memory:
    read from the checkpoint ``files`` where it is one of their tensors as stored, else copied
    (a tensor the loader renamed or reshaped). The values are the same bytes either way.

    ``dtypes``, by full name: the dtype each parameter and buffer is to end up in. A tensor read
    from the file is converted as it is read, any other one as a whole. Raises
    :class:`Unconvertible`, the model left as it was, where a tensor the loader made from the
    file's by more than a plain read (a weight converter's stacking, say) would have to change
    dtype: a loader converts the file's tensors first, so its values could differ."""
    stored = stored_tensors(files)
    # by tensor id (a tensor shared by several modules stays shared): the dtype wanted, and whether
    # it stays as it is (in private memory already, in that dtype) or is read from the file
    plan: dict[int, tuple[torch.dtype, bool, StoredTensor | None]] = {}
    swaps = []
    for module, attribute, name, tensor in _tensors(model):
        want = tensor.dtype if dtypes is None else dtypes.get(name)
        if want is None:
            raise Unconvertible(f"no dtype given for {name}")
        entry = stored.get(name)
        if id(tensor) in plan:
            if plan[id(tensor)][0] != want:
                raise Unconvertible(f"{name} is shared with a tensor wanted in {plan[id(tensor)][0]}, not {want}")
        elif mapped(tensor):
            plan[id(tensor)] = (want, False, entry if entry is not None and entry.matches(tensor) else None)
        elif tensor.dtype == want:
            plan[id(tensor)] = (want, True, None)
        elif entry is not None:
            raise Unconvertible(f"{name} was made from the file's {name} by more than a read; it cannot change dtype here")
        else:
            plan[id(tensor)] = (want, False, None)  # e.g. a buffer computed when the model was built
        if not plan[id(tensor)][1]:
            swaps.append((module, attribute, tensor))
    handles: dict[Path, BufferedReader] = {}
    fresh: dict[int, torch.Tensor] = {}
    try:
        for module, attribute, tensor in swaps:
            if id(tensor) not in fresh:
                want, _, entry = plan[id(tensor)]
                if entry is not None:
                    f = handles.get(entry.path) or handles.setdefault(entry.path, open(entry.path, "rb"))  # noqa: SIM115 - closed below
                    fresh[id(tensor)] = entry.read(f, want)
                else:
                    fresh[id(tensor)] = tensor.to(want, copy=True)
            _swap(module, attribute, fresh[id(tensor)])
    finally:
        for f in handles.values():
            f.close()


def _tensors(model: nn.Module) -> Iterator[tuple[nn.Module, str, str, torch.Tensor]]:
    """(module, attribute, full name, tensor) of each parameter and buffer, listed up front (the
    caller replaces them)."""
    found = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attribute, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
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
