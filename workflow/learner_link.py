"""Online RL's learner in another process or on another machine (a GPU box): ``robot learn``.

The robot computer runs the episodes (``robot train online --learner HOST:PORT``). After each iteration it
sends the learner's whole state (``OnlineLearner.state_dict``) and the iteration's chunk decisions to
``robot learn``, which runs the update (``OnlineLearner.step``: PPO, value, the one-step head) on its device
and sends the new state back; the robot side loads it, so the next episodes run the new weights. The learner
keeps nothing between requests but the networks it built when the session began, so the robot side's state
stays the one truth: it is what the resume checkpoint holds, and a learner that restarts loses nothing. Same
code on the same inputs: the updates are the ones a single process makes (bit for bit on the same device type
and thread count).

Frames are ``robot serve``'s (:mod:`hardware.remote.protocol`): length-prefixed, HMAC-signed with the shared
token (``ROBOT_TOKEN``), replay-proof, no pickle; tensors travel as one safetensors blob. Authenticated, not
encrypted: across untrusted networks use an SSH tunnel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from hardware.remote.protocol import (
    TO_CLIENT,
    TO_SERVER,
    FrameLimits,
    PeerClosed,
    ProtocolError,
    check_token,
    decode_arrays,
    decode_header,
    encode_frame,
    new_nonce,
    read_frame,
    tag_nonfinite,
    untag_nonfinite,
    verify,
)
from policies.diffusion import Chain
from robot.checkpoint import flatten_state, unflatten_state
from robot.config import from_dict, to_dict
from workflow.online_collect import Batch

HELLO, PROTOCOL = "robot-learner", 1
FILES = ("checkpoint.json", "tensors.safetensors")  # a policy checkpoint directory's files
BATCH_FIELDS = ("cond", "next_cond", "rewards", "discounts", "terminal", "last")


@dataclass(frozen=True)
class LearnerServerConfig:
    """Where ``robot learn`` listens and what it runs the updates on."""

    host: str = "127.0.0.1"
    """Address to bind; loopback by default (reach it through an SSH tunnel)."""
    port: int = 8766
    """TCP port; 0 lets the OS pick a free one (printed)."""
    device: str = "cpu"
    """Torch device of the updates: cpu, cuda, cuda:N."""
    max_request_mb: int = 1024
    """Largest request accepted (a state and an iteration's decisions)."""
    frame_timeout_s: float = 600.0
    """A request that has begun must arrive whole within this time."""


class LearnerLinkError(ConnectionError):
    """The learner could not be reached, refused us, or the connection dropped."""


# ------------------------------------------------------------------ wire helpers


def _pack(tree: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """A nested state of tensors and numbers as (JSON, one uint8 array of safetensors bytes)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(tree, "s", tensors)
    blob = save({k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in tensors.items()}) if tensors else b""
    return tag_nonfinite(skeleton), {"blob": np.frombuffer(blob, dtype=np.uint8)}


def _unpack(skeleton: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    from safetensors.torch import load

    blob = arrays.get("blob")
    tensors = load(bytes(blob)) if blob is not None and blob.size else {}
    return unflatten_state(untag_nonfinite(skeleton), tensors)


def _batch_tree(batch: Batch) -> dict:
    tree = {name: getattr(batch, name) for name in BATCH_FIELDS}
    tree.update(samples=batch.chains.samples, log_probs=batch.chains.log_probs, timesteps=batch.chains.timesteps)
    return tree


def _batch_from(tree: Mapping[str, Any], sampler, device) -> Batch:
    chains = Chain(tree["samples"].to(device), tree["log_probs"].to(device), tree["timesteps"].to(device), sampler)
    return Batch(chains=chains, **{name: tree[name].to(device) for name in BATCH_FIELDS})


# ------------------------------------------------------------------ the robot side


class RemoteLearner:
    """``OnlineLearner``'s ``step`` run by ``robot learn`` at ``address``; everything else is the local learner's."""

    def __init__(self, address: str, token: str, local, policy: Path, config, *, timeout_s: float = 3600.0):
        self.local, self.timeout_s = local, timeout_s
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"learner address {address!r} must be HOST:PORT (of a running `robot learn`)")
        self.where = address
        self.key = check_token(token, who=f"the learner link to {address}")
        self.limits = FrameLimits(max_header_bytes=64 << 20, max_payload_bytes=1 << 31)
        try:
            self.sock = socket.create_connection((host, int(port)), timeout=10.0)
        except OSError as e:
            raise LearnerLinkError(f"cannot reach the learner at {address} ({e}); is `robot learn --port {port}` running there?") from None
        hello, _ = self._read(10.0, signed=False)
        if hello.get("hello") != HELLO or hello.get("protocol") != PROTOCOL:
            self.close()
            raise LearnerLinkError(f"{address} did not greet like `robot learn` (protocol {PROTOCOL}); is it another service, or another kit version?")
        self.nonce, self.seq = bytes.fromhex(str(hello["nonce"])), 0
        files = {name: np.frombuffer((Path(policy) / name).read_bytes(), dtype=np.uint8) for name in FILES}
        self._request("init", {"config": to_dict(dataclasses.replace(config, value_from=None, device="cpu"))}, files)

    def __getattr__(self, name: str) -> Any:  # sampler, state_dict, load_state_dict, distill_gen, ...
        return getattr(self.local, name)

    def step(self, batch: Batch, iteration: int) -> dict[str, float]:
        """Send the state and the decisions; load the state the learner sends back; its charts."""
        state, state_arrays = _pack(self.local.state_dict())
        decisions, batch_arrays = _pack(_batch_tree(batch))
        arrays = {"state": state_arrays["blob"], "batch": batch_arrays["blob"]}
        result, back = self._request("step", {"iteration": iteration, "state": state, "batch": decisions}, arrays)
        self.local.load_state_dict(_unpack(result["state"], back), what=f"the learner at {self.where}")
        return {k: float(v) for k, v in untag_nonfinite(result["stats"]).items()}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _request(self, op: str, args: dict, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        self.seq += 1
        try:
            self.sock.settimeout(self.timeout_s)
            self.sock.sendall(encode_frame({"seq": self.seq, "op": op, "args": args}, arrays, key=self.key, direction=TO_SERVER, nonce=self.nonce))
            header, arrays = self._read(self.timeout_s, signed=True)
        except (OSError, PeerClosed) as e:
            raise LearnerLinkError(f"the connection to the learner at {self.where} dropped during {op} ({e}); "
                                   "rerun the command to resume from the last finished update") from None  # fmt: skip
        if header.get("seq") != self.seq:
            raise LearnerLinkError(f"the learner at {self.where} answered request {header.get('seq')!r} while we waited for {self.seq}")
        if header.get("ok") is not True:
            raise LearnerLinkError(f"the learner at {self.where} refused {op}: {header.get('error', 'no reason given')}")
        return header.get("result") or {}, arrays

    def _read(self, timeout: float, *, signed: bool) -> tuple[dict, dict[str, np.ndarray]]:
        """One frame's header and (signed frames only) its arrays."""
        raw = read_frame(self.sock, self.limits, timeout)
        if raw is None:
            raise PeerClosed("the learner closed the connection")
        header = decode_header(raw)
        if signed and not verify(raw, self.key, TO_CLIENT, self.nonce):
            raise LearnerLinkError(f"the learner at {self.where} refused our token ({header.get('error', 'a reply failed authentication')}); "
                                   "both sides need the same ROBOT_TOKEN")  # fmt: skip
        return header, (decode_arrays(header, raw, self.limits) if signed else {})


# ------------------------------------------------------------------ the learner side


def serve_learner(config: LearnerServerConfig, token: str, *, echo: Callable[[str], None] = print, sessions: int | None = None) -> None:
    """Serve updates to one robot computer at a time until interrupted (or ``sessions`` sessions ended)."""
    key = check_token(token, who="robot learn")
    limits = FrameLimits(max_header_bytes=64 << 20, max_payload_bytes=config.max_request_mb << 20)
    with socket.create_server((config.host, config.port)) as listener:
        echo(f"learner listening on {config.host}:{listener.getsockname()[1]} (updates on {config.device})")
        served = 0
        while sessions is None or served < sessions:
            conn, peer = listener.accept()
            with conn:
                _session(conn, key, limits, config, echo, peer)
            served += 1


def _session(conn: socket.socket, key: bytes, limits: FrameLimits, config: LearnerServerConfig, echo, peer) -> None:
    nonce = new_nonce()
    conn.sendall(encode_frame({"hello": HELLO, "protocol": PROTOCOL, "nonce": nonce.hex()}, key=None, direction=TO_CLIENT, nonce=nonce))
    learner, seq = None, 0
    while True:
        try:
            raw = read_frame(conn, limits, config.frame_timeout_s if learner is not None else 60.0)
        except (OSError, ProtocolError, PeerClosed) as e:
            echo(f"session with {peer[0]} ended: {e}")
            return
        if raw is None:
            echo(f"session with {peer[0]} ended")
            return
        if not verify(raw, key, TO_SERVER, nonce):  # nothing unsigned reaches the parser of our state
            conn.sendall(encode_frame({"ok": False, "error": "auth: the request is not signed with this learner's token"}, key=None, direction=TO_CLIENT, nonce=nonce))
            echo(f"refused {peer[0]}: bad token")
            return
        header = decode_header(raw)
        if header.get("seq") != seq + 1:
            return  # a replay or a lost frame: the session cannot go on
        seq += 1
        try:
            if header.get("op") == "init":
                learner = _build_learner(header["args"]["config"], decode_arrays(header, raw, limits), config.device)
                echo(f"session with {peer[0]}: learner built for {learner.config.policy}")
                result, arrays = {}, {}
            elif header.get("op") == "step" and learner is not None:
                result, arrays = _step(learner, header["args"], decode_arrays(header, raw, limits))
            else:
                raise ValueError(f"unknown or out-of-order request {header.get('op')!r}")
            reply = {"seq": seq, "ok": True, "result": result}
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            reply, arrays = {"seq": seq, "ok": False, "error": f"{type(e).__name__}: {e}"}, {}
        conn.sendall(encode_frame(reply, arrays, key=key, direction=TO_CLIENT, nonce=nonce))


def _build_learner(config_dict: Mapping[str, Any], files: Mapping[str, np.ndarray], device: str):
    from policies.consistency import ConsistencyHead
    from robot.checkpoint import load_checkpoint
    from workflow.distributed import init_distributed
    from workflow.online import OnlineConfig
    from workflow.online_update import OnlineLearner
    from workflow.policy import KIND, build_from_checkpoint
    from workflow.ppo import fine_tuned_steps

    config = from_dict(OnlineConfig, {**config_dict, "device": device})
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            (Path(tmp) / name).write_bytes(files[name].tobytes())
        ckpt = load_checkpoint(tmp, kind=KIND)
    ddp, dev = init_distributed(torch.device(device))
    model, head = build_from_checkpoint(ckpt, device=str(dev))
    model = fine_tuned_steps(model, config.ft_steps)  # the robot computer's learner has the same frozen steps
    head = head if head is not None else (ConsistencyHead.from_policy(model, config.head) if config.distill_steps else None)
    return OnlineLearner(model, config, ddp, dev, head)


def _step(learner, args: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    learner.load_state_dict(_unpack(args["state"], {"blob": arrays["state"]}), what="the robot computer's state")
    device = next(learner.value.parameters()).device
    batch = _batch_from(_unpack(args["batch"], {"blob": arrays["batch"]}), learner.sampler, device)
    stats = learner.step(batch, int(args["iteration"]))
    state, state_arrays = _pack(learner.state_dict())
    return {"state": state, "stats": tag_nonfinite(stats)}, state_arrays
