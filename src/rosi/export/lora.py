"""The edit as a PEFT LoRA adapter: rank 1, ``lora_alpha`` 1, one adapter module per edited matrix.

A rosi edit is ``W' = W + outer(s_hat, r)`` per matrix, which is exactly a rank-1 LoRA with
``lora_B = s_hat`` (``[out, 1]``) and ``lora_A = r^T`` (``[1, in]``) at scale ``alpha / r = 1``. The
adapter is built by PEFT itself on the base model's structure (made on the meta device: no
weights are loaded), its LoRA factors set from the edit record, and saved with PEFT's own
``save_pretrained``, so ``PeftModel.from_pretrained(base, folder)`` loads it with no rosi import.

Mapping per writer kind: attention/MLP projections are LoRA ``Linear`` layers (GPT-2's Conv1D
with ``fan_in_fan_out``), the token embedding is PEFT's embedding LoRA (``lora_embedding_A`` =
``r`` over the vocabulary, ``lora_embedding_B`` = ``s_hat``), and fused mixture-of-experts stacks
go through PEFT's parameter targeting (``target_parameters``), one rank-1 factor per expert.
A rank-two edit (``surgical``: ``W' = W + outer(s_hat, r) + outer(f_hat, r2)``) is a rank-2 LoRA
with ``lora_B = [s_hat, f_hat]`` and ``lora_A = [r; r2]`` (``lora_alpha`` 2, so the scale stays 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rosi.edit.record import EditRecord
from rosi.errors import RosiError
from rosi.export.verification import Check, Verification
from rosi.model.writers import Layout, WriterKind

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ExportError(RosiError):
    """An edit cannot be written in the asked format."""


def lora_config(record: EditRecord, base_name: str | None, conv1d: bool) -> Any:
    """The PEFT configuration covering exactly the record's matrices."""
    from peft import LoraConfig

    modules = sorted({m.name.rsplit(".", 1)[0] for m in record.matrices if m.kind is not WriterKind.EXPERT})
    parameters = sorted(m.name for m in record.matrices if m.kind is WriterKind.EXPERT)
    return LoraConfig(
        r=record.rank,
        lora_alpha=record.rank,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=modules or None,
        target_parameters=parameters or None,
        fan_in_fan_out=conv1d,
        base_model_name_or_path=base_name,
        init_lora_weights=False,
    )


def write_lora(record: EditRecord, config: Any, out: Path, base_name: str | None) -> Path:
    """Write the adapter of ``record`` for a base model with transformers ``config`` into folder ``out``."""
    try:
        from peft import get_peft_model
    except ImportError:
        raise ExportError("LoRA adapters need PEFT: pip install peft") from None
    import transformers as T

    with torch.device("meta"):
        base = T.AutoModelForCausalLM.from_config(config)
    base.config._name_or_path = base_name or ""
    base.name_or_path = base_name or ""  # what PEFT records as base_model_name_or_path: the base, not the config's folder
    if record.rank > 1 and any(m.kind is WriterKind.EXPERT for m in record.matrices):
        raise ExportError("a rank-two edit of fused expert weights cannot be written as a LoRA adapter; save a checkpoint")
    conv1d = any(m.layout is Layout.IN_OUT and m.kind is not WriterKind.EMBEDDING for m in record.matrices)
    peft_model = get_peft_model(base, lora_config(record, base_name, conv1d))
    factors = _factors(record)
    done = {_set_factors(name, module, factors) for name, module in peft_model.named_modules()}
    missing = sorted(set(factors) - done)
    if missing:
        raise ExportError(f"PEFT made no adapter for {missing[0]}; this writer cannot be exported as a LoRA adapter")
    peft_model.save_pretrained(str(out), save_embedding_layers=False)  # the LoRA factors only, never a copy of the embedding
    _check_config(out / ADAPTER_CONFIG, record.rank)
    return out


def check_fits(record: EditRecord, config: Any, base: str) -> None:
    """Refuse a base (``config``: its transformers configuration, ``base``: its spec) the edit was
    not made for: every matrix the record edits must be a weight of that architecture, with the
    direction's width as its output and the right factor's length as its input (checked on the
    meta device: no weights are read)."""
    import transformers as T

    fix = "pass as --base the model the edit was made from"
    try:
        with torch.device("meta"):
            model = T.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"--base {base}: its configuration makes no causal language model ({e}); {fix}") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    hidden = record.direction.vector.numel()
    for m in record.matrices:
        weight = params.get(m.name)
        if weight is None:
            kind = getattr(config, "model_type", "?")
            raise ExportError(f"--base {base} (a {kind!r} model) has no weight {m.name}: the edit was made for another model; {fix}")
        view = m.layout.as_out_in(weight)
        right = (view.shape[0], view.shape[-1]) if m.kind is WriterKind.EXPERT else (view.shape[-1],)
        factors_fit = tuple(m.right.shape) == right and (m.right2 is None or tuple(m.right2.shape) == right)
        if view.dim() < 2 or view.shape[-2] != hidden or not factors_fit:
            raise ExportError(
                f"--base {base}: {m.name} is {list(weight.shape)}, and the edit (a direction of {hidden}, a right factor of "
                f"{list(m.right.shape)}) was made for another shape; {fix}"
            )


def _factors(record: EditRecord) -> dict[str, tuple[torch.Tensor, torch.Tensor, WriterKind]]:
    """Parameter name -> (left factors ``[out, rank]``, right factors ``[rank, in]``, kind), float32
    (experts: ``s_hat`` and ``[experts, in]``)."""
    s_hat = record.direction.unit
    out: dict[str, tuple[torch.Tensor, torch.Tensor, WriterKind]] = {}
    for m in record.matrices:
        if m.kind is WriterKind.EXPERT:
            out[m.name] = (s_hat, m.right.to(torch.float32), m.kind)
            continue
        lefts, rights = [s_hat], [m.right.to(torch.float32)]
        if record.second is not None and m.right2 is not None:
            lefts.append(record.second.unit)
            rights.append(m.right2.to(torch.float32))
        out[m.name] = (torch.stack(lefts, dim=1), torch.stack(rights), m.kind)
    return out


def _set_factors(module_name: str, module: Any, factors: dict[str, tuple[torch.Tensor, torch.Tensor, WriterKind]]) -> str | None:
    """Give a PEFT LoRA layer the factors of the record's matrix it wraps (real tensors: the base
    is on meta); returns that matrix's name (None: not a layer of the record)."""
    lora_a = getattr(module, "lora_A", None)
    lora_emb_a = getattr(module, "lora_embedding_A", None)
    base_name = module_name.removeprefix("base_model.model.")
    param_name = getattr(module, "parameter_name", None)
    key = f"{base_name}.{param_name}" if param_name else f"{base_name}.weight"
    if key not in factors or (not lora_a and not lora_emb_a):
        return None
    left, right, kind = factors[key]
    if kind is WriterKind.EMBEDDING:
        module.lora_embedding_A["default"] = torch.nn.Parameter(right.clone())  # [rank, vocab]
        module.lora_embedding_B["default"] = torch.nn.Parameter(left.clone())  # [hidden, rank]
    elif kind is WriterKind.EXPERT:
        experts = right.shape[0]  # right: [experts, in]; PEFT stacks the experts' rank-1 factors
        module.lora_A["default"].weight = torch.nn.Parameter(right.clone())  # [experts * 1, in]
        module.lora_B["default"].weight = torch.nn.Parameter(left.unsqueeze(1).repeat(1, experts))  # [out, 1 * experts]
    else:
        module.lora_A["default"].weight = torch.nn.Parameter(right.clone())  # [rank, in]
        module.lora_B["default"].weight = torch.nn.Parameter(left.clone())  # [out, rank]
    return key


def _check_config(path: Path, rank: int) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("r") != rank:
        raise ExportError(f"{path}: PEFT wrote an unexpected configuration ({config.get('peft_type')}, r={config.get('r')})")


def verify_adapter(folder: Path, base_config: Any = None, base: str | None = None) -> Verification:
    """Check an adapter folder rosi wrote against its edit record: each edited linear writer's
    ``lora_B`` must be ``s_hat`` and its ``lora_A`` the recorded ``r`` (the embedding's and fused
    experts' factors are stored in PEFT's own layouts, and checked by loading with PEFT); given
    the base's transformers configuration (``base_config``, of the model ``base``), that the edit
    fits that base (:func:`check_fits`)."""
    from safetensors.torch import load_file

    record = EditRecord.load(folder / "rosi_edit.safetensors")
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    factors = _factors(record)
    result = Verification(str(folder), "lora", record.method, record.strength, len(record.matrices), base=base)
    if base_config is not None:
        try:
            check_fits(record, base_config, base or "?")
            result.checks.append(
                Check("(base)", True, "every matrix the adapter edits is a weight of the base, of the shape its factors fit")
            )
        except ExportError as e:
            result.checks.append(Check("(base)", False, str(e)))
    for m in record.matrices:
        if m.kind in (WriterKind.EMBEDDING, WriterKind.EXPERT):
            continue
        module = m.name.rsplit(".", 1)[0]
        a, b = tensors.get(f"base_model.model.{module}.lora_A.weight"), tensors.get(f"base_model.model.{module}.lora_B.weight")
        left, right, _ = factors[m.name]
        if a is None or b is None:
            result.checks.append(Check(module, False, f"no LoRA factors in {ADAPTER_WEIGHTS}"))
        elif a.shape != right.shape or b.shape != left.shape:
            result.checks.append(
                Check(module, False, f"the adapter's factors have shapes {tuple(b.shape)}, {tuple(a.shape)}, not the recorded edit's")
            )
        else:
            same = torch.allclose(a.float(), right, rtol=1e-5, atol=1e-7) and torch.allclose(b.float(), left, rtol=1e-5, atol=1e-7)
            result.checks.append(Check(module, same, "lora_B, lora_A " + ("are" if same else "are not") + " the recorded edit's factors"))
    return result
