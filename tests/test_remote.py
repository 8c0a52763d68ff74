"""`robot serve` and the `remote:HOST:PORT` robot: the contract through the server, authentication,
fuzzing (the server never crashes and never moves the arm for anything but a signed, well-formed
command), the watchdog when a client dies or goes silent, and the command line end to end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.conformance import CHECKS, check_robot
from hardware.mujoco import MujocoArm
from hardware.registry import open_robot
from hardware.remote import RemoteConfig, RemoteRobot, RobotServer, ServerConfig
from hardware.remote.client import RemoteAuthError, RemoteConnectionLost, RemoteError, RemoteUnavailable
from hardware.remote.protocol import (
    MAC_BYTES,
    MAGIC,
    OPS,
    TO_CLIENT,
    TO_SERVER,
    FrameLimits,
    ProtocolError,
    RawFrame,
    decode_arrays,
    decode_header,
    encode_frame,
    mac,
    read_frame,
    verify,
)
from hardware.remote.serve import exposure_warning
from hardware.safety import SafeRobot, SafetyConfig
from robot.types import STATE
from sim.registry import make_scene

ROOT = Path(__file__).parents[1]
TOKEN = "test-token-0123456789abcdef0123456789abcdef"
WATCHDOG_S = 0.2
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SLOW_FUZZ = settings(max_examples=5000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


class CountingArm(MujocoArm):
    """The push arm, counting what reaches it: commands that move it, resets, holds."""

    moves = resets = holds = 0

    def apply(self, action: np.ndarray) -> None:
        self.moves += 1
        super().apply(action)

    def reset(self, seed=None):
        self.resets += 1
        return super().reset(seed)

    def hold(self) -> np.ndarray:
        self.holds += 1
        return super().hold()


def make_served(**config) -> tuple[CountingArm, SafeRobot, RobotServer]:
    arm = CountingArm(make_scene("push"))
    robot = SafeRobot(arm)
    options = {"port": 0, "watchdog_timeout_s": WATCHDOG_S, "frame_timeout_s": 0.5, **config}
    return arm, robot, RobotServer(robot, TOKEN, ServerConfig(**options))


@pytest.fixture
def served():
    arm, robot, server = make_served()
    with server:
        yield arm, robot, server
    robot.close()


def remote(server: RobotServer, token: str = TOKEN) -> RemoteRobot:
    host, port = server.address
    return RemoteRobot(RemoteConfig(host=host, port=port), token=token)


class RawClient:
    """Speaks the wire format by hand, so tests can send what RemoteRobot never would."""

    def __init__(self, server: RobotServer, key: bytes = TOKEN.encode()):
        deadline = time.monotonic() + 2
        while True:  # the server may still be closing the previous fuzz session: wait for the free slot
            self.sock = socket.create_connection(server.address, timeout=5)
            hello = decode_header(read_frame(self.sock, FrameLimits(), 5))
            if "nonce" in hello or time.monotonic() > deadline:
                break
            self.sock.close()
            time.sleep(0.001)
        self.nonce, self.key, self.seq = bytes.fromhex(hello["nonce"]), key, 0

    def frame(self, op: str, args: dict | None = None, arrays: dict | None = None, seq: object = None) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        header = {"seq": seq, "op": op, "args": args or {}}
        return encode_frame(header, arrays, key=self.key, direction=TO_SERVER, nonce=self.nonce)

    def signed(self, header: bytes, payload: bytes = b"") -> bytes:
        """A frame with this exact header and payload, correctly signed (the MAC is not what is being tested)."""
        prefix = struct.pack("<4sII", MAGIC, len(header), len(payload))
        return prefix + header + payload + mac(self.key, TO_SERVER, self.nonce, prefix, header, payload)

    def reply(self) -> tuple[dict | None, bool]:
        """The next reply's header (None when the server closed instead) and whether it was signed."""
        raw = read_frame(self.sock, FrameLimits(max_payload_bytes=1 << 24), 5)
        if raw is None:
            return None, False
        return decode_header(raw), verify(raw, self.key, TO_CLIENT, self.nonce)

    def closed_by_server(self) -> bool:
        """Whether the server ends the connection (after at most one unsigned error) within 5 s."""
        self.sock.settimeout(5)
        try:
            while True:
                raw = read_frame(self.sock, FrameLimits(max_payload_bytes=1 << 24), 5)
                if raw is None:
                    return True
                header = decode_header(raw)
                assert header["ok"] is False and not verify(raw, self.key, TO_CLIENT, self.nonce), header
        except (ConnectionError, ProtocolError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def arm_snapshot(arm: CountingArm, robot: SafeRobot) -> tuple:
    counters = robot.counters.as_dict()
    counters.pop("watchdog_holds")  # the watchdog keeps holding the armed, idle arm
    return arm.moves, arm.resets, counters, robot.get_observation()[STATE].copy()


def assert_arm_unmoved(before: tuple, after: tuple, nonfinite: int = 0) -> None:
    moves, resets, counters, state = before
    assert after[0] == moves and after[1] == resets, "a command or reset reached the arm"
    assert after[2] == {**counters, "nonfinite": counters["nonfinite"] + nonfinite}
    assert np.allclose(after[3], state, atol=1e-3), (after[3], state)  # pusher and block where they were


def armed(robot: SafeRobot) -> None:
    """Connect and reset the server's arm: the watchdog is armed and any stray command would move it."""
    robot.connect()
    robot.reset(0)


def assert_a_good_client_still_works(arm: CountingArm, server: RobotServer) -> None:
    moves = arm.moves
    with remote(server) as robot:
        robot.get_observation()
        applied = robot.send_action(np.array([0.01, 0.0], np.float32))
    assert np.allclose(applied, [0.01, 0.0]) and arm.moves == moves + 1


# -- the contract through the server ---------------------------------------------------------


def test_check_robot_passes_through_the_server(served) -> None:
    arm, robot, server = served
    host, port = server.address
    client, task = open_robot(f"remote:{host}:{port}", token=TOKEN)
    assert task is None and client.name == f"sim:push@{host}:{port}"
    report = check_robot(client)
    assert report.passed == CHECKS
    assert report.counters["nonfinite"] == 2 and report.counters["watchdog_holds"] > 0
    assert report.counters == robot.counters.as_dict()  # the checker saw the server's counters
    assert arm.moves > 5 and not robot.is_connected and not client.is_connected


def test_features_applied_actions_and_timestamps(served, monkeypatch) -> None:
    arm, robot, server = served
    monkeypatch.setenv("ROBOT_TOKEN", TOKEN)
    host, port = server.address
    client, _ = open_robot(f"remote:{host}:{port}")  # token from ROBOT_TOKEN
    assert not client.is_connected  # features were read before connect
    assert client.observation_features == robot.observation_features
    assert client.action_features == robot.action_features
    assert client.limits == robot.limits and client.layout == robot.layout
    with client:
        assert abs(client.clock_offset_s) < 1e-3 and client.clock_uncertainty_s < 5e-3  # one host, one clock
        client.reset(3)
        before = time.monotonic()
        obs = client.get_observation()
        after = time.monotonic()
        slack = client.clock_uncertainty_s + 1e-4
        assert before - slack <= float(obs["timestamp"]) <= after + slack
        assert obs[STATE].dtype == np.float32 and obs[STATE].shape == (8,)
        applied = client.send_action(np.array([1.0, -1.0], np.float32))  # far past max_step
        assert np.allclose(applied, [0.025, -0.025]) and applied.dtype == np.float32
        assert "step_clipped" in client.last_interventions
        with pytest.raises(ValueError, match=r"expects an action of shape \(2,\)"):
            client.send_action(np.zeros(3, np.float32))  # the server's own error, re-raised here
        with pytest.raises(ValueError, match="never lengthen or disable it"):  # refused by the server
            with client.override_watchdog(10.0):
                pass
        with pytest.raises(ValueError, match="only be shortened"):  # refused before sending
            with client.override_watchdog(None):
                pass
        with client.override_watchdog(0.05):
            assert client.watchdog_timeout_s == 0.05
        assert client.watchdog_timeout_s == WATCHDOG_S
    assert not robot.is_connected


def test_estop_latches_across_sessions_and_one_client_at_a_time(served) -> None:
    arm, robot, server = served
    with remote(server) as first:
        first.reset(0)
        with pytest.raises(RemoteError, match="busy"):
            remote(server)
        first.estop()
        moves = arm.moves
        first.send_action(np.array([0.02, 0.02], np.float32))
        assert arm.moves == moves and robot.counters.estop_holds >= 2  # estop() held, then the command held
    observer = remote(server)  # a later session sees the latch and may clear it
    assert observer.is_estopped and robot.is_estopped
    observer.clear_estop()
    assert not robot.is_estopped


def test_wrong_or_missing_token_is_refused_and_the_arm_does_not_move(served, monkeypatch) -> None:
    arm, robot, server = served
    armed(robot)
    before = arm_snapshot(arm, robot)
    with pytest.raises(RemoteAuthError, match="refused our token"):
        remote(server, token="not-the-token-0123456789")
    thief = RawClient(server, key=b"not-the-token-0123456789")
    thief.sock.sendall(thief.frame("send_action", arrays={"action": np.array([0.02, 0.0], np.float32)}))
    header, signed = thief.reply()
    assert header["error"]["kind"] == "auth" and not signed and thief.closed_by_server()
    monkeypatch.delenv("ROBOT_TOKEN", raising=False)
    with pytest.raises(ValueError, match="ROBOT_TOKEN"):
        remote(server, token=None)
    assert server.refusals["auth"] == 2
    assert_arm_unmoved(before, arm_snapshot(arm, robot))


def test_replays_fail_in_the_same_and_in_another_session(served) -> None:
    arm, robot, server = served
    armed(robot)
    first = RawClient(server)
    frame = first.frame("send_action", arrays={"action": np.array([0.02, 0.0], np.float32)})
    first.sock.sendall(frame)
    reply, signed = first.reply()
    assert signed and reply["seq"] == 1 and reply["ok"] is True
    before = arm_snapshot(arm, robot)
    first.sock.sendall(frame)  # same session: an old sequence number
    assert first.closed_by_server() and server.refusals["sequence"] == 1
    second = RawClient(server)
    second.sock.sendall(frame)  # new session: another nonce, so the MAC fails
    assert second.closed_by_server() and server.refusals["auth"] == 1
    assert_arm_unmoved(before, arm_snapshot(arm, robot))


def test_unreachable_server_and_dropped_connection_are_clear_errors(served) -> None:
    arm, robot, server = served
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(RemoteUnavailable, match=rf"127\.0\.0\.1:{free}.*robot serve --port {free}"):
        open_robot(f"remote:127.0.0.1:{free}", token=TOKEN)
    with pytest.raises(ValueError, match="configured on the server"):
        open_robot(f"remote:127.0.0.1:{free}", token=TOKEN, safety=SafetyConfig(watchdog_timeout_s=1.0))
    client = remote(server)
    client.connect()
    client.reset(0)
    server.close()  # the robot computer goes away mid-session
    with pytest.raises(RemoteConnectionLost, match="dropped during get_observation"):
        client.get_observation()
    assert not client.is_connected
    client.disconnect()  # harmless afterwards


# -- fuzzing: nothing unsigned or malformed reaches the arm ------------------------------------


@pytest.fixture(scope="module")
def fuzzed():
    """One server for the fuzz tests (fresh connections per message); the arm connected and armed."""
    arm, robot, server = make_served()
    with server:
        armed(robot)
        yield arm, robot, server
    robot.close()


@pytest.fixture
def unmoved(fuzzed):
    """Fails the test if the arm moved; then checks a well-formed client still works and re-arms."""
    arm, robot, server = fuzzed
    before = arm_snapshot(arm, robot)
    expected = {"nonfinite": 0}
    yield expected
    assert_arm_unmoved(before, arm_snapshot(arm, robot), expected["nonfinite"])
    _wait_for(lambda: server.client is None, timeout=2)  # the last fuzz session is over
    assert_a_good_client_still_works(arm, server)  # so the server is alive and serving
    armed(robot)


def _send_and_close(server: RobotServer, data: bytes) -> bool:
    client = RawClient(server)
    try:
        client.sock.sendall(data)
        client.sock.shutdown(socket.SHUT_WR)
    except OSError:  # the server refused and closed before we finished writing
        return True
    try:
        return client.closed_by_server()
    finally:
        client.close()


def _valid_move(client: RawClient) -> bytes:
    """A signed, well-formed command that WOULD move the arm 2 cm."""
    return client.frame("send_action", arrays={"action": np.array([0.02, 0.02], np.float32)})


@FUZZ
@given(data=st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: MAGIC + b))
def test_fuzz_random_bytes(fuzzed, unmoved, data: bytes) -> None:
    assert _send_and_close(fuzzed[2], data)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_fuzz_truncated_and_bit_flipped_commands(fuzzed, unmoved, cut: float, flip: int, bit: int) -> None:
    server = fuzzed[2]
    client = RawClient(server)
    frame = _valid_move(client)
    client.close()
    assert _send_and_close(server, frame[: int(cut * len(frame))])
    flipped = bytearray(frame)
    flipped[flip % len(frame)] ^= 1 << bit
    assert _send_and_close(server, bytes(flipped))


@FUZZ
@given(hlen=st.integers(0, 2**32 - 1), plen=st.integers(0, 2**32 - 1))
def test_fuzz_huge_length_prefixes(fuzzed, unmoved, hlen: int, plen: int) -> None:
    limits = FrameLimits()
    if hlen <= limits.max_header_bytes and plen <= 1 << 20:
        hlen = limits.max_header_bytes + 1 + hlen % 2**20  # keep every example over a limit
    started = time.monotonic()
    assert _send_and_close(fuzzed[2], struct.pack("<4sII", MAGIC, hlen, plen) + b"x" * 64)
    assert time.monotonic() - started < 1.0  # refused on the prefix, nothing allocated or awaited


@FUZZ
@given(seq=st.integers().filter(lambda s: s != 1) | st.none() | st.booleans() | st.floats() | st.text(max_size=5))
def test_fuzz_wrong_sequence_numbers(fuzzed, unmoved, seq: object) -> None:
    server = fuzzed[2]
    client = RawClient(server)
    header = json.dumps({"seq": seq, "op": "send_action", "args": {}, "arrays": [["action", "<f4", [2]]]})
    client.sock.sendall(client.signed(header.encode(), np.array([0.02, 0.02], np.float32).tobytes()))
    assert client.closed_by_server()
    client.close()


@FUZZ
@given(header=st.binary(max_size=100))
def test_fuzz_signed_garbage_headers(fuzzed, unmoved, header: bytes) -> None:
    server = fuzzed[2]
    client = RawClient(server)
    client.sock.sendall(client.signed(header))  # not JSON, not an object, or an object without seq 1
    assert client.closed_by_server()
    client.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
BAD_SEEDS = (
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4) | st.booleans()
    | st.integers(max_value=-1) | st.integers(min_value=2**32)
)  # fmt: skip
BAD_DTYPES = st.sampled_from(["|O", "<c8", ">f4", "float32", "<U4", "", "<f16", "|V8"]) | st.text(max_size=4)
BAD_SHAPES = st.lists(st.integers(-3, 3), max_size=3) | JSON
ACTION_BYTES = np.array([0.02, 0.02], np.float32).tobytes()  # a 2 cm move, were the rest of the request right
NO_PAYLOAD = st.just(b"")


def _request(payload: st.SearchStrategy, **fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.fixed_dictionaries(fields), payload)


def _action_spec(dtype: st.SearchStrategy, shape: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.just("action"), dtype, shape).map(lambda t: [list(t)])


# (header without seq, payload): signed requests malformed in one field or another
BAD_REQUESTS = st.one_of(
    _request(NO_PAYLOAD, op=JSON | st.text(max_size=12)),
    _request(NO_PAYLOAD, op=st.sampled_from(sorted(OPS)), args=JSON.filter(lambda a: not isinstance(a, dict))),
    _request(NO_PAYLOAD, op=st.sampled_from(sorted(OPS)), args=st.dictionaries(st.text(max_size=6), JSON, min_size=1)),
    _request(NO_PAYLOAD, op=st.just("reset"), args=st.fixed_dictionaries({"seed": BAD_SEEDS})),
    _request(NO_PAYLOAD, op=st.just("override_watchdog"), args=st.fixed_dictionaries({"timeout_s": JSON})),
    _request(st.just(ACTION_BYTES), op=st.just("send_action"), arrays=_action_spec(BAD_DTYPES, st.just([2]))),
    _request(st.binary(max_size=16), op=st.just("send_action"), arrays=_action_spec(st.just("<f4"), BAD_SHAPES)),
    _request(st.binary(max_size=16), op=st.just("send_action"), arrays=JSON),
    _request(st.just(ACTION_BYTES), op=st.just("send_action"), arrays=st.just([["applied", "<f4", [2]]])),
).filter(lambda request: not _well_formed(*request))


def _well_formed(header: dict, payload: bytes) -> bool:
    """Whether the server would run this request (the generators above aim to never produce one)."""
    op, args = header.get("op"), header.get("args", {})
    if not (isinstance(op, str) and op in OPS and isinstance(args, dict)):
        return False
    if op == "reset":
        seed = args.get("seed")
        return set(args) <= {"seed"} and (seed is None or (type(seed) is int and 0 <= seed < 2**32))
    if op == "override_watchdog":
        timeout = args.get("timeout_s")
        return type(timeout) in (int, float) and 0 < timeout <= WATCHDOG_S
    if op == "send_action":
        try:
            arrays = decode_arrays(header, RawFrame(b"", memoryview(b""), memoryview(payload), b""), FrameLimits())
        except ProtocolError:
            return False
        return set(arrays) == {"action"} and arrays["action"].shape == (2,) and arrays["action"].dtype.kind in "iuf"
    return not args and not header.get("arrays")


def _nan_action() -> st.SearchStrategy:
    values = st.sampled_from([np.nan, np.inf, -np.inf]) | st.floats(-0.02, 0.02)
    return st.tuples(values, values).filter(lambda a: not np.all(np.isfinite(a)))


@FUZZ
@given(requests=st.lists(BAD_REQUESTS, min_size=4, max_size=8), nans=st.lists(_nan_action(), max_size=3))
def test_fuzz_signed_requests_with_bad_fields_get_errors_and_move_nothing(fuzzed, unmoved, requests, nans) -> None:
    """Each bad request gets a signed error reply and the session goes on; NaN/inf actions hold the arm."""
    _send_bad_requests(fuzzed[2], unmoved, requests, nans)


def _send_bad_requests(server: RobotServer, unmoved: dict, requests: list, nans: list) -> None:
    client = RawClient(server)
    for header, payload in requests:
        client.seq += 1
        body = json.dumps({"seq": client.seq, **header}, allow_nan=True).encode()
        client.sock.sendall(client.signed(body, payload))
        reply, signed = client.reply()
        assert signed and reply["seq"] == client.seq and reply["ok"] is False, (header, reply)
    for action in nans:
        client.sock.sendall(client.frame("send_action", arrays={"action": np.array(action, np.float32)}))
        reply, signed = client.reply()
        assert signed and reply["ok"] is True and reply["result"]["interventions"] == ["nonfinite"]
    unmoved["nonfinite"] += len(nans)
    client.close()
    deadline = time.monotonic() + 2
    while server.client is not None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
@SLOW_FUZZ
@given(data=st.binary(max_size=2000) | st.binary(max_size=2000).map(lambda b: MAGIC + b))
def test_fuzz_random_bytes_long(fuzzed, unmoved, data: bytes) -> None:
    assert _send_and_close(fuzzed[2], data)


@pytest.mark.slow
@SLOW_FUZZ
@given(requests=st.lists(BAD_REQUESTS, min_size=1, max_size=20), nans=st.lists(_nan_action(), max_size=3))
def test_fuzz_bad_fields_long(fuzzed, unmoved, requests, nans) -> None:
    _send_bad_requests(fuzzed[2], unmoved, requests, nans)


def test_a_stalled_frame_or_a_silent_stranger_loses_the_slot() -> None:
    arm, robot, server = make_served(frame_timeout_s=0.2, auth_timeout_s=0.3)
    with server:
        stalled = RawClient(server)
        stalled.sock.sendall(_valid_move(stalled)[:20])  # and never the rest
        assert stalled.closed_by_server()
        silent = RawClient(server)  # connects, never sends
        assert silent.closed_by_server()
        assert_a_good_client_still_works(arm, server)
    robot.close()


# -- a client that dies or goes silent ---------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import sys, numpy as np
    from hardware.registry import open_robot
    robot, _ = open_robot(sys.argv[1])
    robot.connect()
    robot.reset(0)
    for i in range(100000):
        robot.send_action(np.array([0.02 if (i // 10) % 2 else -0.02, 0.0], np.float32))
        if i == 0:
            print("driving", flush=True)
    """
)


def _start_driver(server: RobotServer) -> subprocess.Popen:
    host, port = server.address
    env = {**os.environ, "ROBOT_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, f"remote:{host}:{port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "driving"
    return proc


def _wait_for(condition, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails past ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.002)
    return time.monotonic() - start


def _assert_still(robot: SafeRobot, seconds: float) -> None:
    first = np.array(robot.arm_state().ee_position)
    time.sleep(seconds)
    assert np.linalg.norm(np.array(robot.arm_state().ee_position) - first) < 1e-3


def test_a_killed_client_makes_the_arm_hold_within_the_watchdog_timeout(served) -> None:
    arm, robot, server = served
    proc = _start_driver(server)
    try:
        moves = arm.moves
        _wait_for(lambda: arm.moves > moves + 20, timeout=10)  # streaming commands
        holds, watchdog = arm.holds, robot.counters.watchdog_holds
        os.kill(proc.pid, signal.SIGKILL)
        assert _wait_for(lambda: arm.holds > holds, timeout=5) < WATCHDOG_S
        moves = arm.moves
        _wait_for(lambda: robot.counters.watchdog_holds > watchdog, timeout=5 * WATCHDOG_S)  # and keeps holding
        _assert_still(robot, 2 * WATCHDOG_S)
        assert arm.moves == moves and server.client is None and robot.is_connected
    finally:
        proc.kill()
        proc.wait()
    assert_a_good_client_still_works(arm, server)


def test_a_silent_client_makes_the_arm_hold_within_the_watchdog_timeout(served) -> None:
    arm, robot, server = served
    proc = _start_driver(server)
    try:
        moves = arm.moves
        _wait_for(lambda: arm.moves > moves + 20, timeout=10)
        watchdog = robot.counters.watchdog_holds
        os.kill(proc.pid, signal.SIGSTOP)  # alive, connected, silent
        stopped = time.monotonic()
        _wait_for(lambda: robot.counters.watchdog_holds > watchdog, timeout=5)
        assert time.monotonic() - stopped < WATCHDOG_S + 0.1  # timeout plus one watchdog period and slack
        _assert_still(robot, 2 * WATCHDOG_S)
        assert server.client is not None  # the session is still open: only the watchdog acted
    finally:
        proc.kill()
        proc.wait()


# -- the command line ------------------------------------------------------------------------


def test_robot_serve_end_to_end(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cmd = [sys.executable, "-m", "robot.cli", "serve", "--robot", "sim:push", "--port", "0", "--token-file", str(token_file)]
    env = {k: v for k, v in os.environ.items() if k != "ROBOT_TOKEN"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = next(line for line in proc.stdout if line.startswith("serving") or proc.poll() is not None)
        assert line.startswith("serving sim:push on 127.0.0.1:") and "watchdog 0.5 s" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        client, _ = open_robot(f"remote:127.0.0.1:{port}", token=TOKEN)
        assert check_robot(client).passed == CHECKS
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "client 127.0.0.1:" in out and out.rstrip().endswith("stopped; sim:push disconnected")


def test_robot_serve_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROBOT_TOKEN"}
    cmd = [sys.executable, "-m", "robot.cli", "serve", "--port", "0"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "ROBOT_TOKEN" in out.stderr and "secrets.token_hex" in out.stderr
    assert exposure_warning("127.0.0.1", 8765) is None and exposure_warning("::1", 8765) is None
    assert "NOT encrypted" in exposure_warning("0.0.0.0", 8765)


# -- the wire format -------------------------------------------------------------------------


def test_arrays_round_trip_and_bad_specs_are_refused() -> None:
    arrays = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "u8": np.arange(7, dtype=np.uint8),
        "big": np.arange(3, dtype=">f8"),  # sent little-endian
        "flag": np.array(True),
        "empty": np.zeros((0, 4), np.int16),
    }
    frame = encode_frame({"x": 1}, arrays, key=b"k" * 16, direction=TO_SERVER, nonce=b"n")
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame)
        raw = read_frame(right, FrameLimits(), 1)
    assert verify(raw, b"k" * 16, TO_SERVER, b"n") and not verify(raw, b"k" * 16, TO_CLIENT, b"n")
    assert len(raw.mac) == MAC_BYTES
    decoded = decode_arrays(decode_header(raw), raw, FrameLimits())
    for name, value in arrays.items():
        assert np.array_equal(decoded[name], value) and decoded[name].dtype == value.dtype.newbyteorder("<")
    with pytest.raises(ProtocolError, match="cannot send"):
        encode_frame({}, {"o": np.array([object()])}, key=None, direction=TO_SERVER, nonce=b"")
    for specs, match in (
        ([["a", "<f4", [3]]], "runs past"),
        ([["a", "<f4", [1]]], "no array describes"),
        ([["a", "|O", [2]]], "dtype"),
        ([["a", "<f4", [-2]]], "shape"),
        ([["a", "<f4", [2]], ["a", "<f4", [0]]], "repeated"),
    ):
        header = {"arrays": specs}
        raw = RawFrame(b"", memoryview(b""), memoryview(bytes(8)), b"")
        with pytest.raises(ProtocolError, match=match):
            decode_arrays(header, raw, FrameLimits())


def test_a_stranger_mid_frame_does_not_stall_the_token_holder() -> None:
    """The server reads as bytes arrive: a half-sent frame waits for its deadline while the token holder is served."""
    events: list[str] = []
    arm, robot, _ = make_served()
    server = RobotServer(robot, TOKEN, ServerConfig(port=0, watchdog_timeout_s=WATCHDOG_S, frame_timeout_s=3.0, auth_timeout_s=6.0), on_event=events.append)
    with server:
        stranger = RawClient(server, key=b"not-the-token-at-all")
        stranger.sock.sendall(stranger.frame("reset")[:20])  # and never the rest
        for _ in range(3):
            assert_a_good_client_still_works(arm, server)
        assert not any("did not arrive whole" in e for e in events), events  # served while the stranger's frame was pending
        assert stranger.closed_by_server()
        assert any("did not arrive whole within 3 s" in e for e in events), events
    robot.close()


def test_strangers_that_reconnect_or_crowd_the_queue_never_keep_the_token_holder_out() -> None:
    arm, robot, server = make_served(auth_timeout_s=5.0, max_pending=4)
    with server:
        stop = threading.Event()

        def reconnect_forever() -> None:  # connect, say nothing, drop, again: the probe that held the slot 80 of 80 times
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    socket.create_connection(server.address, timeout=1).close()

        crowd = [socket.create_connection(server.address, timeout=5) for _ in range(6)]  # silent, more than max_pending
        threads = [threading.Thread(target=reconnect_forever, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for _ in range(10):
                assert_a_good_client_still_works(arm, server)
        finally:
            stop.set()
            for t in threads:
                t.join()
            for sock in crowd:
                sock.close()
        assert len(server._pending) <= 4
    robot.close()
