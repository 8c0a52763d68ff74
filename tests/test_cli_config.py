"""The command line generated from the config dataclasses: every field reachable, typed once."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import pytest
import typer.main

from robot.cli import COMMANDS, GENERATED, app
from robot.cli_config import build, config_flags


@dataclass(frozen=True)
class Inner:
    widths: tuple[int, ...] = (64, 64)
    """Layer widths."""
    kind: typing.Literal["a", "b"] = "a"
    """Which one."""


@dataclass(frozen=True)
class Outer:
    out: str
    """Where."""
    rate: float = 0.1
    """How fast."""
    floor: float | None = None
    """A floor, or none."""
    on: bool = True
    """Whether."""
    inner: Inner = field(default_factory=Inner)


def _values(flags, **given):
    return {f.param: given.get(f.param) for f in flags}


def test_flags_name_every_leaf_field_with_its_docstring():
    flags = config_flags(Outer, aliases={"inner.kind": ("--kind",)})
    assert [f.name for f in flags] == ["--out", "--rate", "--floor", "--on", "--inner-widths", "--inner-kind"]
    assert [f.help for f in flags] == ["Where.", "How fast.", "A floor, or none.", "Whether.", "Layer widths.", "Which one."]
    assert flags[0].required and not flags[1].required and flags[-1].aliases == ("--kind",)


def test_help_shows_the_values_of_the_config_a_command_starts_from():
    flags = {f.name: f for f in config_flags(Outer, start={"inner": Inner(widths=(8,), kind="b")})}
    assert flags["--inner-widths"].default == (8,) and flags["--inner-kind"].default == "b" and flags["--rate"].default == 0.1


def test_build_keeps_what_the_user_left_out_and_applies_what_they_gave():
    flags = config_flags(Outer)
    assert build(Outer, flags, _values(flags, out="o")) == Outer(out="o")
    derived = {"inner": Inner(widths=(8,), kind="b")}  # what a command computes, e.g. a preset
    got = build(Outer, flags, _values(flags, out="o", inner__widths="16, 32", floor="0.5", on=False), derived=derived)
    assert got == Outer(out="o", floor=0.5, on=False, inner=Inner(widths=(16, 32), kind="b"))  # the derived kind survives
    assert build(Outer, flags, _values(flags, out="o", floor="none")).floor is None
    with pytest.raises(ValueError, match="--inner-widths: expected a comma-separated list"):
        build(Outer, flags, _values(flags, out="o", inner__widths="8,x"))


def _leaf_paths(cls, prefix=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_paths(hints[f.name], (*prefix, f.name))
        else:
            yield "--" + "-".join((*prefix, f.name)).replace("_", "-")


@pytest.mark.parametrize("command, config", [("train imitation", "workflow.imitation:ImitationConfig"), ("train offline", "workflow.offline:OfflineConfig"),
                                             ("train online", "workflow.online:OnlineConfig"), ("train distill", "workflow.distill:DistillConfig"),
                                             ("pipeline", "workflow.pipeline:PipelineConfig"), ("record", "workflow.record:RecordConfig"),
                                             ("deploy", "workflow.deploy:DeployConfig"), ("diagnose", "workflow.diagnostics.diagnose:DiagnoseConfig"),
                                             ("critic-ranking", "workflow.diagnostics.ranking:RankingConfig"), ("convert", "workflow.convert:ConvertConfig"),
                                             ("eval", "workflow.evaluate:EvalConfig")])  # fmt: skip
def test_every_config_field_is_a_flag_of_its_command_with_help(command, config):
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    cmd = typer.main.get_command(app)
    for word in command.split():
        cmd = cmd.get_command(None, word)
    options = {o: p for p in cmd.params for o in p.opts}
    arguments = {p.name for p in cmd.params if p.param_type_name == "argument"}  # a positional field (diagnose's run)
    missing = [path for path in _leaf_paths(cls) if path not in options and path[2:] not in arguments]
    assert not missing, f"{command}: fields without a flag: {missing}"
    undocumented = [path for path in _leaf_paths(cls) if path in options and (not options[path].help or options[path].help.startswith("(default"))]
    assert not undocumented, f"{command}: flags without help: {undocumented}"
    assert set(GENERATED) >= {"imitation", "offline", "online", "distill"} and {"pipeline", "record", "deploy", "diagnose", "critic-ranking", "convert", "eval"} <= set(COMMANDS)
