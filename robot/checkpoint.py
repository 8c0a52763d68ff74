"""Checkpoints: a directory of safetensors weights + JSON, never pickle.

Layout::

    CKPT/checkpoint.json   format, kit version, kind, config, features, normaliser
                           modes, extra (step, stage ...), sha256 of tensors.safetensors
    CKPT/tensors.safetensors   every tensor: "<module>/<param>" for each saved module,
                           "normalizer/<key>.offset|scale", "state/<path>" for
                           optimiser or other nested training state

Loading never runs code: JSON and safetensors only. A checkpoint is written to a
temporary directory and renamed into place, so a kill mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from robot import __version__
from robot.normalize import Normalizer
from robot.types import Feature, features_from_dict, features_to_dict

FORMAT = "robot-checkpoint"
FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
MANIFEST = "checkpoint.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message names the path and the reason."""


@dataclass
class Checkpoint:
    kind: str  # what built it, e.g. "diffusion-policy"
    config: dict[str, Any]  # the resolved config of the model (JSON)
    modules: dict[str, dict[str, Any]]  # module name -> state dict (torch tensors)
    normalizer: Normalizer | None = None
    features: dict[str, dict[str, Feature]] = field(default_factory=dict)  # e.g. {"input": ..., "action": ...}
    extra: dict[str, Any] = field(default_factory=dict)  # step, stage, robot, task ...
    state: Any = None  # nested training state (optimiser, schedulers, RNG), tensors inside
    kit_version: str = __version__
    source: str | None = None  # the directory it was loaded from (for messages)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to the directory ``path`` atomically and return the path."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, Any] = {}
    for name, state in ckpt.modules.items():
        for param, value in state.items():
            tensors[f"{name}/{param}"] = _contiguous(value)
    norm_modes = None
    if ckpt.normalizer is not None:
        arrays, norm_modes = ckpt.normalizer.to_tensors()
        for key, value in arrays.items():
            tensors[f"normalizer/{key}"] = _contiguous(value)
    state_json = flatten_state(ckpt.state, "state", tensors) if ckpt.state is not None else None
    bad = _first_nonfinite(tensors)
    if bad is not None:  # a diverged run must not leave a policy that holds every action
        raise CheckpointError(f"{path}: refusing to write {bad}: it holds NaN or inf")

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / TENSORS))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kit_version": ckpt.kit_version,
        "kind": ckpt.kind,
        "config": ckpt.config,
        "modules": sorted(ckpt.modules),
        "features": {group: features_to_dict(f) for group, f in ckpt.features.items()},
        "normalizer": norm_modes,
        "state": state_json,
        "extra": ckpt.extra,
        "sha256": _sha256(tmp / TENSORS),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None, device: str = "cpu") -> Checkpoint:
    """Read a checkpoint directory; refuse anything that is not a complete, intact checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {MANIFEST} is corrupt ({e})") from None
    _check_manifest(path, manifest)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kit checkpoint (format {manifest.get('format')!r})")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest['format_version']} is newer than this kit reads "
            f"({FORMAT_VERSION}); written by kit {manifest.get('kit_version')}, this is {__version__}"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {manifest.get('kind')!r}, expected a {kind!r}")
    tensor_path = path / TENSORS
    if not tensor_path.is_file():
        raise CheckpointError(f"{path}: {TENSORS} is missing")
    if _sha256(tensor_path) != manifest.get("sha256"):
        raise CheckpointError(f"{path}: {TENSORS} does not match its checksum; the file is corrupt or was replaced")
    try:
        tensors = load_file(str(tensor_path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read {TENSORS} ({e})") from None

    modules: dict[str, dict[str, Any]] = {name: {} for name in manifest.get("modules", [])}
    norm_arrays: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head == "normalizer":
            norm_arrays[rest] = value.cpu().numpy()
        elif head in modules:
            modules[head][rest] = value
    bad = _first_nonfinite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path}: {bad} holds NaN or inf; a policy from it could not act (was it written by a run that diverged?)")
    try:
        features = {g: features_from_dict(f) for g, f in manifest.get("features", {}).items()}
        normalizer = Normalizer.from_tensors(norm_arrays, manifest["normalizer"]) if manifest.get("normalizer") else None
        if normalizer is not None:
            normalizer.check_shapes({k: f.shape for group in features.values() for k, f in group.items()})
        state = unflatten_state(manifest["state"], tensors) if manifest.get("state") is not None else None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: {_reason(e)}") from None
    return Checkpoint(
        kind=manifest["kind"],
        config=manifest["config"],
        modules=modules,
        normalizer=normalizer,
        features=features,
        extra=manifest.get("extra", {}),
        state=state,
        kit_version=manifest.get("kit_version", "unknown"),
        source=str(path),
    )


def load_module_state(module: Any, state: Mapping[str, Any], *, what: str) -> None:
    """``module.load_state_dict(state)`` with an error that says which weights do not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise CheckpointError(f"{what}: weights do not fit this network: " + "; ".join(parts))
    module.load_state_dict(state)


# ------------------------------------------------------------------ internals
MANIFEST_FIELDS = {"kind": str, "config": dict, "modules": list, "features": dict, "extra": dict}
"""Fields every manifest holds, with their JSON types (``normalizer``: an object or null)."""


def _check_manifest(path: Path, manifest: Any) -> None:
    """Refuse a manifest whose shape is not a checkpoint's, naming the field and what it should be."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: {MANIFEST} holds a JSON {type(manifest).__name__}, expected an object")
    if manifest.get("format") != FORMAT:
        return  # load_checkpoint names the format
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"{path}: {MANIFEST} field {key!r} is {_json_kind(manifest.get(key))}, expected a JSON {_json_kind(kind())}")
    if not all(isinstance(m, str) for m in manifest["modules"]):
        raise CheckpointError(f"{path}: {MANIFEST} field 'modules' must list module names (strings)")
    norm = manifest.get("normalizer")
    if norm is not None and not (isinstance(norm, dict) and all(isinstance(v, str) for v in norm.values())):
        raise CheckpointError(f"{path}: {MANIFEST} field 'normalizer' must map each key to its mode, got {_json_kind(norm)}")
    if not isinstance(manifest.get("format_version", 0), int):
        raise CheckpointError(f"{path}: {MANIFEST} field 'format_version' is {_json_kind(manifest['format_version'])}, expected an integer")


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _reason(e: Exception) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _first_nonfinite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, if any."""
    import torch

    for name, value in tensors.items():
        t = torch.as_tensor(value)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _contiguous(value: Any):
    import torch

    t = torch.as_tensor(value)
    return t.detach().cpu().contiguous()


def flatten_state(obj: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """Replace tensors in a nested dict/list by ``{"__tensor__": name}`` and collect them."""
    import torch

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        tensors[prefix] = _contiguous(obj)
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        # JSON keys are strings: remember int keys (optimiser state is keyed by param index)
        return {
            "__dict__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()],
        }
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint (tensors, numbers, strings, lists, dicts only)")


def unflatten_state(obj: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
