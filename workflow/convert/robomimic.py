"""Import a robomimic HDF5 dataset into our episode store, one atomic episode at a time.

robomimic's layout (its docs, "Dataset Structure")::

    data                  attrs: total, env_args (JSON: env_name, env_type, env_kwargs)
    data/demo_N           attrs: num_samples; datasets: actions (N, A), rewards (N,), dones (N,),
                          states (N, S); groups obs/<key>, next_obs/<key>
    mask/<filter_key>     names of the demos in that subset, e.g. mask/train, mask/valid

Key mapping (robomimic -> ours):

- ``observation.state``: the low-dim obs keys named in ``state_keys``, concatenated
  in that order; by default robomimic's usual low-dim set (robot0_eef_pos,
  robot0_eef_quat, robot0_gripper_qpos, object) when the file has all of them,
  else every low-dim obs key in name order.
- ``observation.images.<cam>``: every uint8 (H, W, 3) obs key, ``<cam>`` being the
  key without its ``_image`` suffix (agentview_image -> agentview).
- ``action`` <- actions; ``reward`` <- rewards; ``success`` <- rewards >=
  ``success_reward`` (robosuite gives 1 on success steps); ``done`` True on the
  last step (robomimic's ``dones`` depend on the extraction's done_mode).
- The episode's filter keys go to ``extra["filter_keys"]``; ``filter_key`` imports
  only the demos of one of them. fps comes from env_kwargs.control_freq.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robot.types import ACTION, DONE, REWARD, STATE, SUCCESS, EpisodeMeta, Feature, image_key
from workflow.convert.mapping import IMPORTED_FROM, ConvertError, KeyMapping, as_float_frames, check_rgb_frames, last_step_done

DEFAULT_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")  # robomimic's low-dim configs


class RobomimicSource:
    """A robomimic HDF5 file read demo by demo (an ``EpisodeSource``)."""

    format = "robomimic"

    def __init__(
        self, path: Path, *, state_keys: Sequence[str] = (), drop: Sequence[str] = (), task: str | None = None, robot: str | None = None,
        fps: float | None = None, source: str = "demo", filter_key: str | None = None, success_reward: float = 1.0,
    ):  # fmt: skip
        import h5py

        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise ConvertError(f"{self.path}: not a readable HDF5 file ({e}); the file is truncated or damaged; re-download or re-export it") from None
        if "data" not in self._file:
            raise ConvertError(f"{self.path}: no 'data' group (has {list(self._file)}); not a robomimic dataset (pass --from to name the format)")
        data = self._file["data"]
        self._env_args = _env_args(self.path, data)
        self._masks = _masks(self._file)
        demos = sorted((k for k in data if isinstance(data[k], h5py.Group)), key=_demo_order)
        if filter_key is not None:
            if filter_key not in self._masks:
                raise ConvertError(f"--filter-key {filter_key}: {self.path} has filter keys {sorted(self._masks) or 'none'} under mask/")
            demos = [d for d in demos if d in self._masks[filter_key]]
        if not demos:
            raise ConvertError(f"{self.path}: no demos under data/{f' in mask/{filter_key}' if filter_key else ''}; nothing to import")
        self._demos, self._success_reward, self._source = demos, success_reward, source
        kwargs = self._env_args.get("env_kwargs") or {}
        self._task = task or self._env_args.get("env_name") or "unknown"
        robots = kwargs.get("robots")
        self._robot = robot or ("+".join(map(str, robots)) if isinstance(robots, list) else str(robots or "unknown"))
        self.fps = float(fps or kwargs.get("control_freq") or 0)
        if not self.fps > 0:
            raise ConvertError(f"{self.path}: env_args has no env_kwargs.control_freq, so the rate is unknown; pass --fps")
        self._state_keys, self._cameras, self.mappings = self._plan(data[demos[0]], state_keys, drop)
        names = [f"{k}_{i}" for k, n in self._state_sizes.items() for i in range(n)]
        self._features: dict[str, Feature] = {}
        if self._state_keys:
            self._features[STATE] = Feature((len(names),), "float32", names=tuple(names))
        for key, (cam, shape) in self._cameras.items():
            self._features[image_key(cam)] = Feature(shape, "uint8")
        self._features.update({ACTION: Feature((self._action_size,)), REWARD: Feature(()), DONE: Feature((), "bool"), SUCCESS: Feature((), "bool")})

    # ------------------------------------------------------------------ EpisodeSource
    @property
    def features(self) -> dict[str, Feature]:
        return self._features

    def __len__(self) -> int:
        return len(self._demos)

    def source_id(self, index: int) -> str:
        return self._demos[index]

    def read(self, index: int) -> tuple[dict[str, np.ndarray], EpisodeMeta]:
        demo = self._demos[index]
        where = f"{self.path} data/{demo}"
        group = self._file["data"][demo]
        actions = self._read(group, "actions", where)
        n = len(actions)
        if n == 0:
            raise ConvertError(f"{where}: 0 steps; an episode needs at least one; leave it out with --filter-key or fix the file")
        frames: dict[str, np.ndarray] = {}
        if self._state_keys:
            frames[STATE] = np.concatenate([as_float_frames(self._read(group, f"obs/{k}", where), where=f"{where}/obs/{k}", length=n) for k in self._state_keys], axis=1)
        for key, (cam, _) in self._cameras.items():
            frames[image_key(cam)] = check_rgb_frames(self._read(group, f"obs/{key}", where), where=f"{where}/obs/{key}", length=n)
        frames[ACTION] = as_float_frames(actions, where=f"{where}/actions", length=n)
        frames[REWARD] = as_float_frames(self._read(group, "rewards", where), where=f"{where}/rewards", length=n)[:, 0]
        frames[SUCCESS] = frames[REWARD] >= self._success_reward - 1e-6
        frames[DONE] = last_step_done(n)
        declared = group.attrs.get("num_samples")
        if declared is not None and int(declared) != n:
            raise ConvertError(f"{where}: num_samples says {int(declared)} steps but actions has {n}; the file is inconsistent; re-export it")
        extra = {
            IMPORTED_FROM: {"format": self.format, "path": str(self.path), "episode": demo},
            "filter_keys": sorted(name for name, members in self._masks.items() if demo in members),
        }
        meta = EpisodeMeta(task=self._task, robot=self._robot, fps=self.fps, success=bool(frames[SUCCESS].any()), source=self._source, extra=extra)
        return frames, meta

    def close(self) -> None:
        self._file.close()

    # ------------------------------------------------------------------ internals
    def _plan(self, first: Any, state_keys: Sequence[str], drop: Sequence[str]) -> tuple[list[str], dict[str, tuple[str, tuple[int, ...]]], list[KeyMapping]]:
        where = f"{self.path} data/{self._demos[0]}"
        if "obs" not in first:
            raise ConvertError(f"{where}: no obs group; this file has states and actions only; extract observations first with robomimic's dataset_states_to_obs.py")
        for name in ("actions", "rewards"):
            if name not in first:
                raise ConvertError(f"{where}: no {name} dataset; a robomimic dataset needs it; extract it with robomimic's dataset_states_to_obs.py")
        self._action_size = int(np.prod(first["actions"].shape[1:], dtype=np.int64)) or 1
        obs = first["obs"]
        unknown = [k for k in drop if k not in obs]
        if unknown:
            raise ConvertError(f"--drop {unknown[0]}: no obs key of that name in {where}; it has {', '.join(obs)}")
        low_dim = [k for k in obs if k not in drop and obs[k].ndim <= 2 and obs[k].dtype.kind in "fiub"]
        rgb = [k for k in obs if k not in drop and obs[k].ndim == 4 and obs[k].shape[-1] == 3 and obs[k].dtype == np.uint8]
        for key in state_keys:
            if key not in low_dim:
                why = "it is dropped" if key in drop else "it is not a low-dim obs key" if key in obs else "no such obs key"
                raise ConvertError(f"--state-keys {key}: {why} in {where}; low-dim keys: {', '.join(low_dim) or 'none'}")
        chosen = list(state_keys) or (list(DEFAULT_STATE_KEYS) if set(DEFAULT_STATE_KEYS) <= set(low_dim) else sorted(low_dim))
        self._state_sizes = {k: int(np.prod(obs[k].shape[1:], dtype=np.int64)) for k in chosen}
        cameras = {k: (re.sub(r"_image$", "", k), tuple(int(s) for s in obs[k].shape[1:])) for k in rgb}
        if not chosen and not cameras:
            raise ConvertError(f"{where}: no low-dim or RGB obs keys to import (obs: {', '.join(obs)}); name keys with --state-keys")
        mappings = [KeyMapping(" + ".join(f"obs/{k}" for k in chosen), STATE, f"{sum(self._state_sizes.values())} values")] if chosen else []
        mappings += [KeyMapping(f"obs/{k}", image_key(cam), "x".join(map(str, shape))) for k, (cam, shape) in cameras.items()]
        mappings += [
            KeyMapping("actions", ACTION),
            KeyMapping("rewards", REWARD),
            KeyMapping("rewards", SUCCESS, f"reward >= {self._success_reward}"),
            KeyMapping("(demo ends)", DONE, "True on each demo's last step (robomimic dones not used)"),
        ]
        for key in obs:
            if key in drop:
                mappings.append(KeyMapping(f"obs/{key}", "-", "dropped (--drop)"))
            elif key not in chosen and key not in cameras:
                kind = "low-dim; name it in --state-keys to use it" if key in low_dim else f"{obs[key].dtype} {obs[key].shape[1:]}, not RGB uint8"
                mappings.append(KeyMapping(f"obs/{key}", "-", f"left out ({kind})"))
        return chosen, cameras, mappings

    def _read(self, group: Any, name: str, where: str) -> np.ndarray:
        if name not in group:
            fix = f"fix the file or leave the key out with --drop {name[4:]}" if name.startswith("obs/") else "fix the file"
            raise ConvertError(f"{where}: no {name} (data/{self._demos[0]} has it); every demo needs the same keys; {fix}")
        try:
            return np.asarray(group[name][()])
        except (OSError, ValueError) as e:
            raise ConvertError(f"{where}/{name}: cannot be read ({e}); the file is truncated or damaged; re-download or re-export it") from None


def _demo_order(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"demo_(\d+)", name)
    return (int(match.group(1)), name) if match else (1 << 62, name)


def _env_args(path: Path, data: Any) -> dict[str, Any]:
    raw = data.attrs.get("env_args")
    if raw is None:
        return {}
    try:
        args = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: data attribute env_args is not valid JSON ({e}); fix it or re-export the dataset") from None
    if not isinstance(args, dict):
        raise ConvertError(f"{path}: data attribute env_args is a {type(args).__name__}, expected a JSON object; fix it or re-export the dataset")
    return args


def _masks(file: Any) -> dict[str, set[str]]:
    if "mask" not in file:
        return {}
    return {name: {m.decode() if isinstance(m, bytes) else str(m) for m in file["mask"][name][()]} for name in file["mask"]}
