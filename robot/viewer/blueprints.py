"""Viewer layouts: an episode's (cameras, series, policy internals) and training curves'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from robot.types import ACTION, IMAGES_PREFIX, REWARD, Features
from robot.viewer.layout import CHAIN_DIMS, COMMANDED, FLAGS, dim_names, entity, draw_kind, part, rerun_sdk

if TYPE_CHECKING:
    from rerun.blueprint import Blueprint


def episode_blueprint(features: Features, *, policy_internals: bool = False, timeline: str = "step") -> Blueprint:
    """Cameras in a grid, the point cloud and the metadata on top; time series below.

    Series panels: one per vector observation (and any other per-step key), the actions
    (one panel per dimension with commanded vs applied when both exist), reward, flags,
    safety, and with ``policy_internals`` the denoising chain and critic estimates.
    """
    rrb = rerun_sdk().blueprint
    features = dict(features)
    cams = [rrb.Spatial2DView(origin=entity(k), name=k[len(IMAGES_PREFIX):]) for k, f in features.items() if draw_kind(k, f) == "image"]
    top: list[Any] = [rrb.Grid(*cams, name="cameras")] if cams else []
    top += [rrb.Spatial3DView(origin=entity(k), name=k) for k, f in features.items() if draw_kind(k, f) == "points"]
    top.append(rrb.Vertical(rrb.TextDocumentView(origin="episode", name="episode"), rrb.TextLogView(origin="events", name="events")))
    origins: dict[str, str] = {}  # series panel origin -> title, in feature order
    for key, feat in features.items():
        if draw_kind(key, feat) != "series":
            continue
        if key == ACTION and COMMANDED in features:
            origins.update({f"action/{part(n)}": f"action {n}: commanded vs applied" for n in dim_names(ACTION, features)})
        elif key == ACTION:
            origins["action"] = "action (applied)"
        elif key == REWARD or key.startswith(REWARD + "."):
            origins["reward"] = "reward"
        elif key in FLAGS:
            origins["flags"] = "flags"
        elif key.startswith("safety."):
            origins["safety"] = "safety"
        elif key != COMMANDED:
            origins[entity(key)] = key
    series: list[Any] = [rrb.TimeSeriesView(origin=origin, name=name) for origin, name in origins.items()]
    if policy_internals:
        names = dim_names(ACTION, features)[:CHAIN_DIMS] if ACTION in features else ["0"]
        series += [rrb.Spatial2DView(origin=f"policy/denoising/{part(n)}", name=f"denoising chain: {n}") for n in names]
        series.append(rrb.TimeSeriesView(origin="policy", contents=["policy/q/**", "policy/v/**", "policy/chunk_start"], name="critics and chunks"))
    layout = rrb.Vertical(rrb.Horizontal(*top), rrb.Grid(*series, name="time series"), row_shares=[2, 3]) if series else rrb.Horizontal(*top)
    return rrb.Blueprint(layout, rrb.TimePanel(timeline=timeline), collapse_panels=False)


def metrics_blueprint(keys: Iterable[str], *, prefix: str = "train") -> Blueprint:
    """One time-series panel per metric group (``losses``, ``charts``, ``ope``, ...) on ``train_step``."""
    rrb = rerun_sdk().blueprint
    keys = list(keys)
    groups = sorted({k.split("/")[0] for k in keys if "/" in k})
    views = [rrb.TimeSeriesView(origin=f"{prefix}/{part(g)}", name=g) for g in groups]
    if any("/" not in k for k in keys):
        views.append(rrb.TimeSeriesView(origin=prefix, contents=[f"{prefix}/{part(k)}" for k in keys if "/" not in k], name=prefix))
    return rrb.Blueprint(rrb.Grid(*views), rrb.TimePanel(timeline="train_step"), collapse_panels=False)
