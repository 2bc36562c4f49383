"""Saved models: safetensors weights beside a JSON document (architecture, normalisation,
settings, training report). No pickle: loading reads tensors and JSON, never code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fogfl.errors import BandwidthError


def write_model(
    directory: Path, stem: str, tensors: dict[str, torch.Tensor], document: dict[str, Any]
) -> list[Path]:
    """`directory/stem.safetensors` and `directory/stem.json`; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    weights, meta = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights))
    meta.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return [weights, meta]


def read_model(
    directory: Path, stem: str, expected_format: str, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON document written by `write_model`, checked to be `what`
    (its "format" field) and readable; every problem is one BandwidthError line."""
    weights, meta = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    for path in (weights, meta):
        if not path.is_file():
            raise BandwidthError(
                f"--model {directory}: {path.name} is missing; is it a {what} folder "
                "written by fogfl?"
            )
    try:
        document = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BandwidthError(f"{meta}: not a readable JSON document ({error})") from None
    if not isinstance(document, dict) or document.get("format") != expected_format:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise BandwidthError(f"{meta}: format {found!r}, expected {expected_format!r} ({what})")
    try:
        tensors = load_file(str(weights))
    except Exception as error:  # safetensors raises its own and OS errors alike
        raise BandwidthError(f"{weights}: not a readable safetensors file ({error})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BandwidthError(f"{weights}: tensor {name} holds NaN or infinite values")
    return tensors, document


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load `tensors` into `module`, refusing missing, extra or wrongly shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise BandwidthError(
            f"{where}: the weights do not match the architecture (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    for name, tensor in expected.items():
        if tuple(tensors[name].shape) != tuple(tensor.shape):
            raise BandwidthError(
                f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, the "
                f"architecture needs {tuple(tensor.shape)}"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def field(document: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """document[key], checked to be of `kind`."""
    value = document.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BandwidthError(f"{where}: {key!r} must be a {kind.__name__}, found {value!r}")
    return value
