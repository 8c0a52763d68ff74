from dataclasses import dataclass, field

import pytest

from robot.config import from_dict, load_json, save_json, to_dict
from robot.metrics import JsonlMetrics, read_metrics, series


def test_jsonl_metrics_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with JsonlMetrics(path) as sink:
        for step in range(3):
            sink.log({"losses/denoise": 1.0 / (step + 1), "charts/success": float("nan")}, step)
    with open(path, "a") as f:
        f.write('{"step": 3, "losses/den')  # a writer killed mid-line
    rows = read_metrics(path)
    assert len(rows) == 3
    steps, values = series(rows, "losses/denoise")
    assert steps == [0, 1, 2] and values[2] == pytest.approx(1 / 3)
    assert rows[0]["charts/success"] != rows[0]["charts/success"]  # NaN comes back as NaN


@dataclass(frozen=True)
class Inner:
    widths: tuple[int, ...] = (64, 64)
    dropout: float | None = None


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    pair: tuple[float, float] = (0.1, 0.2)


def test_config_round_trip(tmp_path):
    cfg = Outer(name="y", inner=Inner(widths=(8, 16, 32), dropout=0.1))
    assert from_dict(Outer, to_dict(cfg)) == cfg
    save_json(cfg, tmp_path / "config.json")
    assert load_json(Outer, tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="has no field 'nmae'"):
        from_dict(Outer, {"nmae": "typo"})


@pytest.mark.parametrize("data, message", [
    ({"name": 3}, "name: expected a string, got 3"),
    ({"inner": "e"}, "inner: expected a JSON object, got \"e\""),
    ({"inner": {"widths": [8, "e"]}}, "inner.widths[1]: expected an integer, got \"e\""),
    ({"inner": {"widths": [8, True]}}, "inner.widths[1]: expected an integer, got true"),
    ({"inner": {"dropout": "0.1"}}, "inner.dropout: expected a number, got \"0.1\""),
    ({"pair": [0.1]}, "pair: expected 2 items, got 1"),
    ({"pair": 0.1}, "pair: expected a JSON array, got 0.1"),
])  # fmt: skip
def test_a_config_value_of_the_wrong_type_is_an_error_naming_its_path(data, message):
    with pytest.raises(ValueError) as e:
        from_dict(Outer, data)
    assert str(e.value) == message
    assert from_dict(Outer, {"inner": {"dropout": 1}}).inner.dropout == 1.0  # a JSON integer is a number


def test_progress_bars_redraw_once_a_minute_into_a_log_file(monkeypatch):
    import io

    from robot.report import LOG_FILE_BAR_INTERVAL_S, bar_interval
    from workflow.run import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert bar_interval(1.0) == 1.0
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert bar_interval(1.0) == LOG_FILE_BAR_INTERVAL_S == 60.0
    bar = progress(total=1000, initial=0, desc="train")
    for i in range(1000):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")  # a stage's per-step postfix must not redraw either
    bar.close()
    assert bar.mininterval == 60.0 and log.getvalue().count("\r") <= 3  # opened, closed: no redraw per step


def test_only_rank_0_draws_a_progress_bar_under_torchrun(monkeypatch):
    """Imitation and distillation drew a bar per rank; every stage's bar now asks the rank itself."""
    import io

    from workflow.run import progress

    for rank, drawn in (("0", True), ("1", False)):
        log = io.StringIO()
        monkeypatch.setattr("sys.stderr", log)
        monkeypatch.setenv("RANK", rank)
        bar = progress(total=10, initial=0, desc="distill")
        bar.update(10)
        bar.close()
        assert ("distill" in log.getvalue()) is drawn, rank


def test_an_offline_round_is_a_field_of_its_rows_and_old_suffixed_rows_read_the_same(tmp_path):
    from robot.metrics import display_name

    with JsonlMetrics(tmp_path / "new.jsonl") as m:
        m.log({"losses/ppo": 0.5}, 3, round=1)
        m.log({"rollouts/success": 0.7}, 1)
    (tmp_path / "old.jsonl").write_text('{"step": 3, "time": 1.0, "losses/ppo_r1": 0.5, "critic/td_r0": 0.1}\n')
    new = read_metrics(tmp_path / "new.jsonl")
    assert new[0]["round"] == 1 and new[0]["losses/ppo"] == 0.5 and "round" not in new[1]
    old = read_metrics(tmp_path / "old.jsonl")
    assert [(r["round"], r["step"]) for r in old] == [(0, 3), (1, 3)] and old[0]["critic/td"] == 0.1 and old[1]["losses/ppo"] == 0.5
    assert display_name(new[0], "losses/ppo") == "round-1/losses/ppo" and display_name(new[1], "rollouts/success") == "rollouts/success"
