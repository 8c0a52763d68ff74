"""The push task's scripted expert, with the operator styles of ``sim.scene.EXPERT_STYLES``.

The clean expert gets behind the block (seen from the target) by orbiting it the
short way round, pushes it in along the block-to-target line, and re-approaches
when the block drifts off that line. ``noise`` adds i.i.d. sloppiness on top of
any style; a style adds a flaw that RL can learn away:

- ``iid``: no systematic flaw (``noise`` alone).
- ``hesitant``: a slow approach (each episode draws a speed, 22-45% of the
  planned move; it pushes at full speed) and now and then a still step (10-20%
  of the steps, the rate drawn per episode), never two in a row. Episodes take
  2.7 times the clean expert's steps: moving at full speed is better. Runs of
  still steps (tried first: 3-9 at a time) made the style unlearnable: from a
  standing start "stay" outnumbered "move" in the data, and a deterministic
  imitator that stayed once stayed for good (0% success from 100 demos).
- ``biased``: pushes 2.5 cm (x 0.8-1.2 per episode) to the left of the block's
  centre line, seen along the push, near its edge, so the block turns as it goes
  and needs more re-approaches; and it aims for the edge of the target (0.9
  tolerances out, the clean expert 0.3), where an off-centre push turns the block
  more than it moves it: some pushes stall just outside until time runs out.
- ``mixed``: each episode draws the short or the long way round the block
  (half and half), the long way on a wide circle (14 cm): more than twice the
  steps from the same states, and at noise 0.2 more timeouts.

What ``robot record --task push --device scripted --style S --noise Z --episodes 200``
records (seed 0; success, mean length in steps of all episodes, a failure running to
the limit of 100):

| noise | iid | hesitant | biased | mixed | mixed, short way | mixed, long way |
|---|---|---|---|---|---|---|
| 0 | 100%, 18 | 100%, 48 | 86%, 39 | 100%, 30 | 100%, 18 | 100%, 43 |
| 0.1 | 91%, 29 | 84%, 62 | 92%, 40 | 92%, 41 | 90%, 29 | 93%, 53 |
| 0.2 | 86%, 36 | 66%, 74 | 86%, 48 | 80%, 54 | 85%, 37 | 74%, 71 |

Successful biased episodes alone take 29 steps at noise 0 (the clean expert's 18).
Imitation of 100 demonstrations at noise 0 (the quick pipeline's stage: chunk
preset, 4,000 steps, ``ddpm-mean``; 30 episodes from seed 100000): hesitant 63%
(mean length 72), biased 63% (60), mixed 83% (43).
"""

from __future__ import annotations

import math

import numpy as np

from robot.protocols import Observation
from sim.push import BLOCK_HALF, PUSHER_RADIUS, TABLE, PushScene
from sim.scene import check_expert_style


class PushExpert:
    """Scripted pusher on the scene's privileged state.

    ``noise`` in [0, 1] adds Gaussian action noise (std ``noise * max_step / 2``),
    hesitations (a few still steps), wrong moves (a few full steps in a random
    direction) and, in a fraction ``0.8 * noise`` of episodes, a misjudged target:
    it stops 3-6 cm short and backs off. Measured over 50 seeds: noise 0 -> 100 %,
    0.5 -> ~66 %. ``style`` adds a systematic flaw (module docstring); its draws
    come from their own random stream, so a style leaves the noise draws as they are.
    ``episode_style`` holds what :meth:`reset` drew for the episode.
    """

    STANDOFF = BLOCK_HALF * math.sqrt(2) + PUSHER_RADIUS + 0.01  # clear of the block at any yaw
    BEHIND = -(BLOCK_HALF + PUSHER_RADIUS) + 0.002  # along-offset closer than this is not behind
    HESITANT_SPEED = (0.22, 0.45)
    """Approach speed of a hesitant episode, fraction of the planned move (uniform draw per episode)."""
    HESITANT_PAUSE_RATE = (0.1, 0.2)
    """Chance per step of one still step in a hesitant episode, never two in a row (uniform draw per episode)."""
    BIAS_OFFSET = 0.025
    """Metres to the left of the block's centre line (seen along the push) that a biased expert pushes at."""
    BIAS_SPREAD = (0.8, 1.2)
    """Per-episode factor on ``BIAS_OFFSET``."""
    BIAS_AIM = 0.9
    """Block-to-target distance a biased expert's push aims for, in success tolerances (the clean one's: 0.3)."""
    LONG_WAY_STANDOFF = 0.14
    """Orbit radius of the long way round (metres; the short way orbits at ``STANDOFF``)."""

    def __init__(self, scene: PushScene, noise: float = 0.0, seed: int | None = None, style: str = "iid"):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"expert noise must be in [0, 1], got {noise}")
        self.scene = scene
        self.noise = noise
        self.style = check_expert_style(style)
        self._rng = np.random.default_rng(seed)
        self._style_rng = np.random.default_rng(None if seed is None else [seed, 1])
        self.reset()

    def reset(self) -> None:
        # A noisy operator sometimes misjudges the target and stops 3-6 cm short of it.
        self._stop_short = 0.0
        if self.noise > 0 and self._rng.random() < 0.8 * self.noise:
            self._stop_short = float(self._rng.uniform(0.03, 0.06))
        self._pushing = False
        self._still = 0  # hesitation steps left
        self._wrong = 0  # wrong-move steps left
        self._wrong_dir = np.zeros(2)
        self._paused = False  # hesitant style: this step was a still one
        self._orbit = 0.0  # mixed style, long way: the orbit direction (+1 counter-clockwise), latched until behind
        self.episode_style = self._draw_style()

    def _draw_style(self) -> dict[str, float | str]:
        rng = self._style_rng
        if self.style == "hesitant":
            return {"speed": float(rng.uniform(*self.HESITANT_SPEED)), "pause_rate": float(rng.uniform(*self.HESITANT_PAUSE_RATE))}
        if self.style == "biased":
            return {"offset": self.BIAS_OFFSET * float(rng.uniform(*self.BIAS_SPREAD))}
        if self.style == "mixed":
            return {"strategy": "long" if rng.random() < 0.5 else "short"}
        return {}

    def act(self, observation: Observation) -> np.ndarray:
        m = self.scene.config.max_step
        action = self._clean_action()
        if self.style == "hesitant":
            action = self._hesitate(action)
        if self.noise > 0:
            action = self._perturb(action, m)
        return np.clip(action, -m, m).astype(np.float32)

    def _clean_action(self) -> np.ndarray:
        s = self.scene
        m, tol = s.config.max_step, s.config.success_tolerance
        pusher, block, target = s.pusher_xy, s.block_xy, s.target_xy
        to_target = target - block
        dist = float(np.linalg.norm(to_target))
        rel = pusher - block
        offset = float(self.episode_style.get("offset", 0.0))  # biased: the lateral offset it pushes at
        aim = max((self.BIAS_AIM if offset else 0.3) * tol, self._stop_short)  # block-to-target distance the push aims for
        if dist < aim + 0.1 * tol:  # done (or believes so): back off from the block
            self._pushing = False
            r = float(np.linalg.norm(rel))
            return np.zeros(2) if r > 0.1 or r == 0.0 else rel / r * m
        d = to_target / dist
        n = np.array([-d[1], d[0]])
        along, lat = float(rel @ d), float(rel @ n) - offset
        # Keep pushing while behind the block and near the line; an off-centre push (biased) may touch a turned
        # block's corner less far behind its centre than a face, so it holds on until the pusher is beside the block.
        behind = -PUSHER_RADIUS if offset and self._pushing else self.BEHIND
        self._pushing = along < behind and abs(lat) < (0.02 if self._pushing else 0.008)
        if self._pushing:
            # Advance along d only as far as the block still has to go; steer onto the centre line.
            advance = min(m, max(0.0, dist - aim - (along + BLOCK_HALF + PUSHER_RADIUS)))
            return d * advance - n * 0.5 * lat
        # Orbit the block on a circle that clears it at any yaw until behind it (biased: beside the line, to
        # its left), then close in.
        rel_angle = math.atan2(rel[1], rel[0])
        start_angle = math.atan2(-d[1], -d[0]) - math.atan2(offset, self.STANDOFF)
        turn = (start_angle - rel_angle + math.pi) % (2 * math.pi) - math.pi
        if abs(turn) < 0.25:
            self._orbit = 0.0
            waypoint = block - d * self.STANDOFF + n * offset
        elif self.episode_style.get("strategy") == "long":  # mixed: the other way round, on a wide circle
            self._orbit = self._orbit or -math.copysign(1.0, turn)
            angle = rel_angle + 0.6 * self._orbit
            waypoint = block + self.LONG_WAY_STANDOFF * np.array([math.cos(angle), math.sin(angle)])
        else:
            angle = rel_angle + float(np.clip(turn, -0.6, 0.6))
            waypoint = block + math.hypot(self.STANDOFF, offset) * np.array([math.cos(angle), math.sin(angle)])
        waypoint = np.clip(waypoint, -TABLE, TABLE)
        return np.clip(waypoint - pusher, -m, m)

    def _hesitate(self, action: np.ndarray) -> np.ndarray:
        """Hesitant style: a slow approach (it pushes at full speed) and now and then one still step, never two
        in a row: a state followed by "stay" more often than by "move" would hold an imitating policy for good."""
        paused, self._paused = self._paused, False
        if not paused and self._style_rng.random() < float(self.episode_style["pause_rate"]):
            self._paused = True
            return np.zeros(2)
        return action if self._pushing else action * float(self.episode_style["speed"])

    def _perturb(self, action: np.ndarray, m: float) -> np.ndarray:
        rng, noise = self._rng, self.noise
        if self._still == 0 and self._wrong == 0:
            if rng.random() < 0.2 * noise:
                self._still = int(rng.integers(1, 7))
            elif rng.random() < 0.15 * noise:
                self._wrong = int(rng.integers(2, 8))
                angle = rng.uniform(-math.pi, math.pi)
                self._wrong_dir = m * np.array([math.cos(angle), math.sin(angle)])
        if self._still > 0:
            self._still -= 1
            action = np.zeros(2)
        elif self._wrong > 0:
            self._wrong -= 1
            action = self._wrong_dir.copy()
        return action + rng.normal(0.0, 0.5 * noise * m, size=2)
