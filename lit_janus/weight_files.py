"""Reading a checkpoint directory's files: JSON, one weight file or an index with shards (safetensors,
or pickles loaded with `weights_only=True`), and which layout it is. Every failure is a
`CheckpointError` naming the file."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or key."""


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file as a dict; CheckpointError naming the file if it is not one."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing weight file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # DeepSeek ships pickles: never unpickle arbitrary objects
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # torch.save's legacy (pre-1.6, non-zip) format cannot be memory-mapped: read it whole
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False: never here. Keep only what the file holds.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a pickled {found.group(1)}" if found else "pickled objects that are not tensors"
        raise CheckpointError(f"cannot read weight file {path}: it holds {what}, and weights are loaded without "
                              "running pickled code (weights_only=True): re-download it, or re-save its tensors "
                              "as safetensors where you trust it") from None
    except Exception as e:
        raise CheckpointError(f"cannot read weight file {path}: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return sd


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: single file or index + shards, safetensors or .bin."""
    d = Path(directory)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index).is_file():
            weight_map = read_json(d / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"cannot read {d / index}: no 'weight_map' object")
            missing = sorted({f for f in weight_map.values() if not (d / f).is_file()})
            if missing:
                raise CheckpointError(f"{d / index} lists shard(s) that are missing: {', '.join(missing)}")
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(_load_file(d / shard))
            absent = sorted(set(weight_map) - set(sd))
            if absent:
                raise CheckpointError(f"keys listed in {index} but absent from the shards: {absent[:5]}")
            return sd
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (d / single).is_file():
            return _load_file(d / single)
    raise CheckpointError(
        f"no weights in {d}: expected model.safetensors, pytorch_model.bin, or an index with shards"
    )


def detect_layout(directory: str | Path) -> str:
    """'deepseek' or 'transformers', from config.json's model_type."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    cfg = d / "config.json"
    if not cfg.is_file():
        raise CheckpointError(
            f"{d} has no config.json: not a Janus-Pro checkpoint in DeepSeek's layout "
            "(model_type 'multi_modality') or transformers' layout (model_type 'janus')"
        )
    model_type = read_json(cfg).get("model_type")
    if model_type == "multi_modality":
        return "deepseek"
    if model_type == "janus":
        return "transformers"
    raise CheckpointError(
        f"{cfg} has model_type {model_type!r}; expected 'multi_modality' (DeepSeek) or 'janus' (transformers)"
    )
