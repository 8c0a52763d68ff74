"""The entity layout shared by stored episodes and live steps: key -> entity paths, what each key draws as, JPEG frames."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Mapping

import numpy as np

from robot.types import ACTION, DONE, INTERVENTION, POINTCLOUD, REWARD, SUCCESS, TIMESTAMP, Feature, Features, is_image_key

COMMANDED = "action.commanded"
FLAGS = (SUCCESS, INTERVENTION, DONE)
CHAIN_DIMS = 2  # action dimensions whose denoising chain is drawn
JPEG_QUALITY = 85
COMMANDED_COLOR = (150, 150, 150)

if TYPE_CHECKING:
    from rerun import RecordingStream


def rerun_sdk():
    import rerun as rr

    return rr


def part(name: str) -> str:
    return rerun_sdk().escape_entity_path_part(str(name))


def entity(key: str) -> str:
    """``observation.images.top`` -> ``observation/images/top``."""
    return "/".join(part(p) for p in key.split("."))


def dim_names(key: str, features: Features) -> list[str]:
    """Labels of a vector key's entries: its Feature.names, the action's for ``action.*``, else 0, 1, ..."""
    feat = features.get(key)
    size = int(feat.shape[0]) if feat is not None and len(feat.shape) == 1 else 0
    for source in (feat, features.get(ACTION) if key.startswith(ACTION) else None):
        if source is not None and source.names and len(source.shape) == 1 and len(source.names) == size:
            return list(source.names)
    return [str(i) for i in range(size)]


def series_paths(key: str, features: Features) -> list[str]:
    """One entity path per scalar series of a scalar or vector key (see the module docstring)."""
    feat = features[key]
    if len(feat.shape) == 0:
        if key == REWARD:
            return ["reward/total"]
        if key in FLAGS:
            return [f"flags/{key}"]
        return [entity(key)]
    names = [part(n) for n in dim_names(key, features)]
    if key == ACTION:
        return [f"action/{n}/applied" for n in names]
    if key == COMMANDED:
        return [f"action/{n}/commanded" for n in names]
    return [f"{entity(key)}/{n}" for n in names]


def draw_kind(key: str, feat: Feature) -> str:
    """image | points | series | skip."""
    if key == TIMESTAMP:
        return "skip"
    if is_image_key(key) and feat.dtype == "uint8" and len(feat.shape) in (2, 3):
        return "image"
    if key == POINTCLOUD or (len(feat.shape) == 2 and feat.shape[1] == 3 and key.endswith("pointcloud")):
        return "points"
    return "series" if len(feat.shape) <= 1 else "skip"


def jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    image = Image.fromarray(frame)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def features_of(data: Mapping[str, np.ndarray]) -> dict[str, Feature]:
    """Features read off arrays with time first (no names): for episodes logged without their store's features."""
    return {k: Feature(tuple(int(s) for s in np.shape(v)[1:]), str(np.asarray(v).dtype)) for k, v in data.items()}


def style_series(rec: RecordingStream, path: str) -> None:
    """Static series style: the legend shows the last path part (the dimension name); commanded is grey."""
    rr = rerun_sdk()
    parts = path.split("/")
    if parts[-1] in ("applied", "commanded"):
        label = f"{parts[-2]} {parts[-1]}"
        colors = [COMMANDED_COLOR] if parts[-1] == "commanded" else None
        rec.log(path, rr.SeriesLines(names=label, colors=colors), static=True)
    elif parts[0] == "flags":
        rec.log(path, rr.SeriesLines(names=parts[-1], interpolation_mode="StepAfter"), static=True)
    else:
        rec.log(path, rr.SeriesLines(names=parts[-1]), static=True)
