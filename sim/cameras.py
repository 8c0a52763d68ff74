"""Offscreen cameras for any MuJoCo model: RGB images and a cropped point cloud.

:class:`CameraRig` renders named cameras of a raw ``mujoco.MjModel`` / ``MjData``
(our own MJCF scenes, and robosuite scenes through ``env.sim.model._model`` and
``env.sim.data._data``). Images come back as ``observation.images.<cam>`` uint8
``(H, W, 3)``, upright (row 0 is the top of the picture, as in OpenCV). With a
:class:`PointCloudConfig`, the depth image of one camera is back-projected with
the camera's intrinsics (``fovy``) and extrinsics (``cam_xpos``, ``cam_xmat``) into
the world frame (or a named body's frame), cropped to a box and sampled to
exactly ``num_points`` points: ``observation.pointcloud`` float32 ``(N, 3)``.

The rig renders ``data`` as it is: callers run ``mj_forward`` (or a step) first so
that camera and geom poses are current. No GL context exists until the first
:meth:`CameraRig.render`; :meth:`CameraRig.close` frees it.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede `import mujoco` to take effect

import math
from dataclasses import dataclass, replace

import mujoco
import numpy as np

from robot.types import POINTCLOUD, Feature, image_key

SAMPLING = ("fps", "random")


def model_cameras(model: mujoco.MjModel) -> tuple[str, ...]:
    """The named cameras of ``model``: what a scene's ``cameras=`` option can render (a scene's ``camera_names``)."""
    names = (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam))
    return tuple(n for n in names if n)


@dataclass(frozen=True)
class PointCloudConfig:
    """Which camera's depth becomes ``observation.pointcloud`` and how it is cut down.

    Fields left ``None`` mean "the scene's default": a scene fills them in with
    :meth:`with_defaults` before it builds its :class:`CameraRig` (the rig itself
    needs every field set).
    """

    camera: str | None = None
    """Camera whose depth image is back-projected."""
    num_points: int = 512
    """Points per cloud, exactly: sampled down, or padded by repeating points."""
    crop_low: tuple[float, float, float] | None = None
    """Lower corner (x, y, z) of the kept box, metres, in the frame of ``frame``."""
    crop_high: tuple[float, float, float] | None = None
    """Upper corner (x, y, z) of the kept box."""
    frame: str | None = None
    """Body whose frame the points are expressed in (e.g. a robot base); ``None`` = world."""
    sampling: str = "fps"
    """``fps`` (farthest-point, deterministic, DP3 style) or ``random`` (seeded, faster)."""
    seed: int = 0
    """Seed of the ``random`` sampler's generator (one generator per rig)."""
    resolution: tuple[int, int] | None = None
    """(height, width) of the depth image; ``None`` = the rig's image size."""

    def __post_init__(self) -> None:
        if self.num_points <= 0:
            raise ValueError(f"PointCloudConfig.num_points must be positive, got {self.num_points}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"PointCloudConfig.sampling must be one of {SAMPLING}, got {self.sampling!r}")
        for name in ("crop_low", "crop_high"):
            box = getattr(self, name)
            if box is not None and (not isinstance(box, tuple) or len(box) != 3):
                raise ValueError(f"PointCloudConfig.{name} must be a tuple (x, y, z), got {box!r}")
        if self.crop_low is not None and self.crop_high is not None:
            if any(lo >= hi for lo, hi in zip(self.crop_low, self.crop_high)):
                raise ValueError(
                    f"PointCloudConfig.crop_low {self.crop_low} must be below crop_high {self.crop_high} on every axis"
                )
        if self.resolution is not None and (len(self.resolution) != 2 or min(self.resolution) <= 0):
            raise ValueError(f"PointCloudConfig.resolution must be (height, width) > 0, got {self.resolution!r}")

    def with_defaults(
        self,
        camera: str,
        crop_low: tuple[float, float, float],
        crop_high: tuple[float, float, float],
    ) -> "PointCloudConfig":
        """A copy whose unset camera and crop box take the given scene defaults."""
        return replace(
            self,
            camera=self.camera if self.camera is not None else camera,
            crop_low=self.crop_low if self.crop_low is not None else crop_low,
            crop_high=self.crop_high if self.crop_high is not None else crop_high,
        )


@dataclass(frozen=True)
class CameraConfig:
    """What a scene renders each step: named RGB cameras and an optional point cloud."""

    cameras: tuple[str, ...] = ()
    """Camera names in the model; each gives ``observation.images.<name>``."""
    height: int = 84
    """Image height in pixels."""
    width: int = 84
    """Image width in pixels."""
    pointcloud: PointCloudConfig | None = None
    """Add ``observation.pointcloud`` from one camera's depth; ``None`` = no cloud."""

    def __post_init__(self) -> None:
        if not isinstance(self.cameras, tuple) or not all(isinstance(c, str) for c in self.cameras):
            raise ValueError(f"CameraConfig.cameras must be a tuple of camera names, got {self.cameras!r}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"CameraConfig.cameras lists a camera twice: {self.cameras}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"CameraConfig image size must be positive, got {self.height}x{self.width}")
        if not self.cameras and self.pointcloud is None:
            raise ValueError("CameraConfig renders nothing: name cameras or a pointcloud, or pass camera=None")


class CameraRig:
    """Renders named cameras (and optionally a point cloud) of one model/data pair."""

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        cameras: tuple[str, ...],
        height: int,
        width: int,
        pointcloud: PointCloudConfig | None = None,
    ):
        self.model = model
        self.data = data
        self.cameras = tuple(cameras)
        self.height = int(height)
        self.width = int(width)
        self.pointcloud = pointcloud
        self._renderer: mujoco.Renderer | None = None  # RGB, created on first render
        self._depth_renderer: mujoco.Renderer | None = None  # depth, own size if configured
        for cam in self.cameras:
            self._camera_id(cam)
        self._check_buffer(self.height, self.width)
        if pointcloud is not None:
            self._init_pointcloud(pointcloud)

    @classmethod
    def from_config(cls, model: mujoco.MjModel, data: mujoco.MjData, config: CameraConfig) -> "CameraRig":
        return cls(model, data, config.cameras, config.height, config.width, config.pointcloud)

    def features(self) -> dict[str, Feature]:
        """``observation.images.<cam>`` uint8 (H, W, 3) per camera, ``observation.pointcloud`` float32 (N, 3)."""
        feats = {
            image_key(cam): Feature((self.height, self.width, 3), "uint8", names=("height", "width", "channel"))
            for cam in self.cameras
        }
        if self.pointcloud is not None:
            feats[POINTCLOUD] = Feature((self.pointcloud.num_points, 3), "float32", names=("x", "y", "z"))
        return feats

    def render(self) -> dict[str, np.ndarray]:
        """Render every camera of the current ``data``; keys as :meth:`features`."""
        out: dict[str, np.ndarray] = {}
        if self.cameras:
            if self._renderer is None:
                self._renderer = _new_renderer(self.model, self.height, self.width)
            for cam in self.cameras:
                self._renderer.update_scene(self.data, camera=cam)
                out[image_key(cam)] = self._renderer.render()  # (H, W, 3) uint8, already upright
        if self.pointcloud is not None:
            out[POINTCLOUD] = self._render_pointcloud()
        return out

    def close(self) -> None:
        """Free the renderers and their GL context (EGL complains at exit otherwise)."""
        for renderer in (self._renderer, self._depth_renderer):
            if renderer is not None:
                renderer.close()
        self._renderer = self._depth_renderer = None

    def __enter__(self) -> "CameraRig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def has_context(self) -> bool:
        """Whether a renderer (and so a GL context) exists right now."""
        return self._renderer is not None or self._depth_renderer is not None

    # ---- internals ----------------------------------------------------------

    def _camera_id(self, name: str) -> int:
        cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cam_id < 0:
            known = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]
            raise ValueError(f"camera {name!r} is not in the model; it has cameras {known}")
        return cam_id

    def _check_buffer(self, height: int, width: int) -> None:
        buf_w, buf_h = self.model.vis.global_.offwidth, self.model.vis.global_.offheight
        if width > buf_w or height > buf_h:
            raise ValueError(
                f"image size {height}x{width} exceeds the model's offscreen buffer {buf_h}x{buf_w}; "
                f'render smaller images or set <visual><global offwidth="{width}" offheight="{height}"/></visual>'
            )

    def _init_pointcloud(self, pc: PointCloudConfig) -> None:
        if pc.camera is None or pc.crop_low is None or pc.crop_high is None:
            raise ValueError(
                f"point cloud config {pc} leaves camera or crop box unset; "
                "call PointCloudConfig.with_defaults(camera, crop_low, crop_high) first"
            )
        self._pc_cam = self._camera_id(pc.camera)
        if np.any(self.model.cam_sensorsize[self._pc_cam] > 0):
            raise ValueError(
                f"camera {pc.camera!r} sets sensorsize/focal intrinsics; point clouds need a fovy camera"
            )
        self._pc_frame = -1
        if pc.frame is not None:
            self._pc_frame = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, pc.frame)
            if self._pc_frame < 0:
                raise ValueError(f"point cloud frame body {pc.frame!r} is not in the model")
        self._pc_size = pc.resolution if pc.resolution is not None else (self.height, self.width)
        self._check_buffer(*self._pc_size)
        self._pc_rng = np.random.default_rng(pc.seed)
        self._crop = (np.asarray(pc.crop_low), np.asarray(pc.crop_high))  # (3,), (3,)
        # Ray through each pixel centre in the camera frame (x right, y up, looking along -z),
        # scaled so that z = -1: multiplying by the depth image gives camera-frame points.
        h, w = self._pc_size
        focal = 0.5 * h / math.tan(math.radians(float(self.model.cam_fovy[self._pc_cam])) / 2)  # pixels
        u = (np.arange(w) + 0.5 - w / 2) / focal
        v = (np.arange(h) + 0.5 - h / 2) / focal
        self._rays = np.stack(np.broadcast_arrays(u[None, :], -v[:, None], -np.ones((h, 1))), axis=-1)  # (H, W, 3)

    def _render_pointcloud(self) -> np.ndarray:
        pc = self.pointcloud
        assert pc is not None  # only called when a point cloud is configured
        if self._depth_renderer is None:
            self._depth_renderer = _new_renderer(self.model, *self._pc_size)
            self._depth_renderer.enable_depth_rendering()
        self._depth_renderer.update_scene(self.data, camera=self._pc_cam)
        depth = self._depth_renderer.render()  # (H, W) metres along the optical axis
        points = (self._rays * depth[..., None]).reshape(-1, 3)  # (H*W, 3) camera frame
        rot = self.data.cam_xmat[self._pc_cam].reshape(3, 3)
        points = points @ rot.T + self.data.cam_xpos[self._pc_cam]  # world frame
        if self._pc_frame >= 0:
            base_rot = self.data.xmat[self._pc_frame].reshape(3, 3)
            points = (points - self.data.xpos[self._pc_frame]) @ base_rot  # R^T (p - x)
        low, high = self._crop
        keep = np.all((points >= low) & (points <= high), axis=1)
        return sample_points(points[keep], pc.num_points, pc.sampling, self._pc_rng)


def _new_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """A ``mujoco.Renderer``, or a clear error where mujoco picked a GL backend that cannot work headless."""
    backend = getattr(getattr(mujoco, "GLContext", None), "__module__", "")
    if backend == "mujoco.glfw" and not os.environ.get("DISPLAY") and os.environ.get("MUJOCO_GL") != "glfw":
        raise RuntimeError(
            "mujoco was imported before MUJOCO_GL was set, so it chose GLFW, which needs a display; "
            "set MUJOCO_GL=egl in the environment, or import sim.cameras before anything imports mujoco"
        )
    return mujoco.Renderer(model, height, width)


def sample_points(points: np.ndarray, n: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` points from ``points`` (M, 3): sampled if M > n, repeated if M < n, zeros if M == 0."""
    m = len(points)
    if m == 0:
        return np.zeros((n, 3), np.float32)
    if m <= n:
        return points[np.arange(n) % m].astype(np.float32)
    if method == "random":
        return points[np.sort(rng.choice(m, n, replace=False))].astype(np.float32)
    return points[farthest_point_indices(points, n)].astype(np.float32)


def farthest_point_indices(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` points (of M > n) chosen greedily to be far apart, starting from the first."""
    idx = np.zeros(n, np.int64)
    nearest = np.full(len(points), np.inf)  # (M,) squared distance to the chosen set
    for i in range(1, n):
        nearest = np.minimum(nearest, np.sum((points - points[idx[i - 1]]) ** 2, axis=1))
        idx[i] = int(np.argmax(nearest))
    return idx
