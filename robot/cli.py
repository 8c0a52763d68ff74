"""The ``robot`` command line: one console command, one subcommand per job.

This module only wires commands to the functions that do the work; each
command imports its implementation lazily so ``robot --help`` stays fast and
importing the kit has no side effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="robot",
    help="Teleop -> diffusion policy -> OPE-gated offline RL -> online RL -> one-step head, in MuJoCo or on a real arm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Run one training stage (resumable; writes a run directory).", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _not_in_this_build(command: str, issue: int, what: str) -> None:
    _fail(f"`robot {command}` ({what}) is not part of this build yet; it is tracked in issue {issue}.")


@app.command()
def info(store: Path = typer.Argument(..., help="Episode store directory (zarr).")) -> None:
    """Summarise an episode store: episodes, steps, keys and shapes, success rate, size on disk."""
    from robot.store import StoreError, ZarrEpisodeStore

    try:
        s = ZarrEpisodeStore.open(store)
    except StoreError as e:
        _fail(str(e))
    from robot.report import store_summary

    typer.echo(store_summary(s))


@app.command()
def record() -> None:
    """Teleoperate (keyboard, SpaceMouse, gamepad or the scripted expert), label success, write episodes."""
    _not_in_this_build("record", 4, "teleop data collection")


@app.command()
def view() -> None:
    """Rerun view of stored episodes (cameras, joints, actions, rewards, labels)."""
    _not_in_this_build("view", 10, "Rerun visualisation")


@train_app.command("imitation")
def train_imitation() -> None:
    """Imitation: fit the diffusion policy to demonstrations."""
    _not_in_this_build("train imitation", 5, "diffusion policy imitation")


@train_app.command("offline")
def train_offline() -> None:
    """Offline RL rounds: IQL critics, PPO on the denoising chain, AM-Q gate."""
    _not_in_this_build("train offline", 6, "OPE-gated offline RL")


@train_app.command("online")
def train_online() -> None:
    """Online RL: PPO over denoising chains on live rollouts."""
    _not_in_this_build("train online", 7, "online RL")


@train_app.command("distill")
def train_distill() -> None:
    """Consistency distillation into a one-step head."""
    _not_in_this_build("train distill", 7, "consistency distillation")


@app.command()
def pipeline() -> None:
    """The whole recipe end to end in sim, with gates, a per-stage table and a report."""
    _not_in_this_build("pipeline", 7, "the end-to-end recipe")


@app.command()
def diagnose() -> None:
    """Offline-workflow diagnostics: regime per stage, chosen checkpoint, advice, plots."""
    _not_in_this_build("diagnose", 8, "offline-workflow diagnostics")


@app.command("eval")
def evaluate() -> None:
    """Success rate, return and latency of a policy in sim."""
    _not_in_this_build("eval", 5, "policy evaluation")


@app.command()
def deploy() -> None:
    """The on-robot runner: fixed-rate loop, safety layer, e-stop, records what it does."""
    _not_in_this_build("deploy", 9, "on-robot deployment")


@app.command()
def serve() -> None:
    """Robot-side server so a policy on another computer can drive the arm."""
    _not_in_this_build("serve", 9, "the robot server")


@app.command()
def convert() -> None:
    """Import/export other dataset formats (LeRobot v3, robomimic HDF5)."""
    _not_in_this_build("convert", 11, "dataset interop")


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
