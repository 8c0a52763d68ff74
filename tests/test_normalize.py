import numpy as np
import pytest
import torch

from robot.normalize import Normalizer


def test_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    data = {
        "action": rng.uniform(-3, 5, size=(500, 3)).astype(np.float32),
        "observation.state": rng.normal(2.0, 4.0, size=(500, 4)).astype(np.float32),
        "observation.images.front": rng.integers(0, 256, size=(10, 8, 8, 3)).astype(np.uint8),
    }
    data["action"][:, 2] = 0.7  # a constant dimension must not blow up
    norm = Normalizer.fit(data, {"action": "limits", "observation.state": "gaussian", "observation.images.front": "image"})
    a = norm.normalize("action", data["action"])
    assert a[:, :2].min() == pytest.approx(-1, abs=1e-5) and a[:, :2].max() == pytest.approx(1, abs=1e-5)
    assert np.all(np.isfinite(a)) and np.allclose(a[:, 2], 0)
    s = norm.normalize("observation.state", data["observation.state"])
    assert np.allclose(s.mean(0), 0, atol=1e-4) and np.allclose(s.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(norm.unnormalize("action", a), data["action"], atol=1e-5)
    t = torch.as_tensor(data["observation.state"])
    np.testing.assert_allclose(norm.unnormalize("observation.state", norm.normalize("observation.state", t)).numpy(), t.numpy(), atol=1e-4)
    img = norm.normalize("observation.images.front", torch.as_tensor(data["observation.images.front"]))
    assert img.dtype == torch.float32 and float(img.max()) <= 1.0
    arrays, modes = norm.to_tensors()
    again = Normalizer.from_tensors(arrays, modes)
    np.testing.assert_array_equal(again.normalize("action", data["action"]), a)


def test_missing_key_is_named():
    norm = Normalizer.fit({"action": np.zeros((3, 2))}, {"action": "limits"})
    with pytest.raises(KeyError, match="no statistics for observation.state"):
        norm.normalize("observation.state", np.zeros(2))
    with pytest.raises(ValueError, match="must be one of"):
        Normalizer.fit({"action": np.zeros((3, 2))}, {"action": "minmax"})
