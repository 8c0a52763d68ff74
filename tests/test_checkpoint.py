"""Checkpoints round trip without pickle and refuse anything mismatched or corrupt."""

import json

import numpy as np
import pytest
import torch

from robot.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_module_state, save_checkpoint
from robot.normalize import Normalizer
from robot.types import Feature


def _net(hidden=8):
    return torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))


def _ckpt(net, opt=None):
    norm = Normalizer.fit({"action": np.random.default_rng(0).normal(size=(50, 2))}, {"action": "limits"})
    return Checkpoint(
        kind="test-net",
        config={"hidden": 8, "layers": [3, 8, 2]},
        modules={"policy": net.state_dict()},
        normalizer=norm,
        features={"action": {"action": Feature((2,), names=("x", "y"))}},
        extra={"step": 12, "robot": "pusher"},
        state={"optimizer": opt.state_dict()} if opt else None,
    )


def test_round_trip_with_optimizer_state(tmp_path):
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ckpt", _ckpt(net, opt))
    assert not list(path.glob("*.pt")) and not list(path.glob("*.pkl"))
    loaded = load_checkpoint(path, kind="test-net")
    net2 = _net()
    load_module_state(net2, loaded.modules["policy"], what=str(path))
    x = torch.randn(5, 3)
    assert torch.equal(net(x), net2(x))
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert loaded.extra["step"] == 12 and loaded.config["layers"] == [3, 8, 2]
    assert loaded.features["action"]["action"].names == ("x", "y")
    a = np.array([[0.3, -0.2]])
    np.testing.assert_allclose(loaded.normalizer.normalize("action", a), _ckpt(net).normalizer.normalize("action", a))


def test_overwrite_replaces_atomically(tmp_path):
    net = _net()
    save_checkpoint(tmp_path / "ckpt", _ckpt(net))
    with torch.no_grad():
        net[0].weight.add_(1.0)
    save_checkpoint(tmp_path / "ckpt", _ckpt(net))
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.modules["policy"]["0.weight"], net[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_refuses_other_network(tmp_path):
    save_checkpoint(tmp_path / "ckpt", _ckpt(_net(hidden=8)))
    loaded = load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="of another shape .*0.weight"):
        load_module_state(_net(hidden=16), loaded.modules["policy"], what="ckpt")
    with pytest.raises(CheckpointError, match="holds a 'test-net', expected a 'diffusion-policy'"):
        load_checkpoint(tmp_path / "ckpt", kind="diffusion-policy")


def test_refuses_corrupt_or_foreign_files(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", _ckpt(_net()))
    blob = bytearray((path / "tensors.safetensors").read_bytes())
    blob[-3] ^= 0xFF  # one flipped byte in a weight
    (path / "tensors.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    (path / "tensors.safetensors").write_bytes(b"garbage")
    manifest = json.loads((path / "checkpoint.json").read_text())
    import hashlib

    manifest["sha256"] = hashlib.sha256(b"garbage").hexdigest()
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    manifest["format_version"] = 7
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="newer than this kit"):
        load_checkpoint(path)
    (path / "checkpoint.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
