"""Operator takeover during a policy rollout (evaluation, deployment, online RL with a human in the loop).

:class:`Takeover` composes a policy and a teleop device. Each tick it polls the
device; the TAKEOVER event (keyboard ``t``, gamepad LB) toggles who drives.
While the operator drives, the device's action replaces the policy's and the
step is flagged ``intervention=True``; handing back resets the policy so it
replans from the current observation instead of playing a stale action chunk.
A tick where the device has no action leaves the policy in charge of that tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hardware.teleop import TeleopDevice, TeleopEvent
from robot.protocols import Observation, Policy


@dataclass(frozen=True)
class TakeoverStep:
    """The action to send, whether it is the operator's, and the device's other events (quit, keep...)."""

    action: np.ndarray
    intervention: bool
    events: frozenset[TeleopEvent] = field(default_factory=frozenset)


class Takeover:
    """A policy that an operator can take over from, with a connected device."""

    def __init__(self, policy: Policy, device: TeleopDevice):
        self.policy = policy
        self.device = device
        self.active = False  # True while the operator drives

    def reset(self) -> None:
        """New episode: the policy drives again, both forget per-episode state."""
        self.active = False
        self.policy.reset()
        self.device.reset()

    def act(self, observation: Observation) -> TakeoverStep:
        command = self.device.poll(observation)
        if TeleopEvent.TAKEOVER in command.events:
            self.active = not self.active
            if not self.active:
                self.policy.reset()  # its queued chunk was planned before the operator moved the robot
        others = command.events - {TeleopEvent.TAKEOVER}
        if self.active and command.action is not None:
            return TakeoverStep(np.asarray(command.action), True, others)
        return TakeoverStep(np.asarray(self.policy.select_action(observation)), False, others)
