"""The ``robot`` command line: one console command, one subcommand per job.

This module only wires commands to the functions that do the work; each
command imports its implementation lazily so ``robot --help`` stays fast and
importing the kit has no side effects.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable, Optional

import typer
from typer.core import TyperGroup

from robot.cli_config import build, config_flags, generated_command
from robot.cli_safety import safety_parameters, with_safety

COMMANDS: dict[str, Callable[[], Callable[..., None]]] = {}
"""Top-level commands whose options are generated from a config dataclass (``robot.cli_config``)."""
GENERATED: dict[str, Callable[[], Callable[..., None]]] = {}
"""The same for ``robot train``. Both are built only when run or listed: their configs import torch, which
``robot --help`` and the light commands should not wait for."""


def _generated_group(commands: dict[str, Callable[[], Callable[..., None]]], *, alphabetical: bool) -> type[TyperGroup]:
    """A command group that builds ``commands`` on first use; listed alphabetically with the others, or after them in
    the order given (``robot train``: the recipe's order)."""

    class Group(TyperGroup):
        def list_commands(self, ctx) -> list[str]:
            listed = super().list_commands(ctx)
            lazy = [n for n in commands if n not in listed]
            return sorted([*listed, *lazy]) if alphabetical else [*listed, *lazy]

        def get_command(self, ctx, cmd_name: str):
            if cmd_name in commands and cmd_name not in self.commands:
                one = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
                one.command(cmd_name)(commands[cmd_name]())
                self.commands[cmd_name] = typer.main.get_command(one)
                self.commands[cmd_name].name = cmd_name
            return super().get_command(ctx, cmd_name)

    return Group


app = typer.Typer(
    name="robot",
    help="Teleop -> diffusion policy -> OPE-gated offline RL -> online RL -> one-step head, in MuJoCo or on a real arm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_generated_group(COMMANDS, alphabetical=True),
)
train_app = typer.Typer(help="Run one training stage (resumable; writes a run directory).", no_args_is_help=True, cls=_generated_group(GENERATED, alphabetical=False))
app.add_typer(train_app, name="train")


def _fail(message: str) -> None:
    """One line on stderr (rank 0's, under torchrun: every rank fails the same way) and exit code 2."""
    if os.environ.get("RANK", "0") == "0":
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _say(message: str) -> None:
    """Print a job's summary once: on rank 0 of a torchrun job (every rank returns the same report)."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(message)


def _run_or_fail(fn, *args, **kwargs):
    """Run a stage; errors caused by the input (bad store, checkpoint, options) become one line and exit 2."""
    from robot.checkpoint import CheckpointError
    from robot.store import StoreError
    from workflow.takeover import OperatorStop

    try:
        return fn(*args, **kwargs)
    except (OperatorStop, ConnectionError) as e:  # the operator stopped; a learner or remote arm unreachable
        _fail(str(e))
    except KeyError as e:  # str() of a KeyError is the repr of its message: drop those quotes
        _fail(str(e.args[0]) if e.args else "missing key")
    except (StoreError, CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))


@app.command()
def info(
    store: Path = typer.Argument(..., help="Episode store directory (zarr)."),
    check: bool = typer.Option(False, "--check", help="Also read every frame: name lost or damaged chunk files and episodes holding NaN or inf (exit 2 if any)."),
) -> None:
    """Summarise an episode store: episodes, steps, keys and shapes, success rate, size on disk."""
    from robot.store import StoreError, ZarrEpisodeStore

    try:
        s = ZarrEpisodeStore.open(store)
    except StoreError as e:
        _fail(str(e))
    from robot.report import store_summary

    typer.echo(store_summary(s))
    if check:
        problems = s.check()
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        if problems:
            raise typer.Exit(2)
        typer.echo(f"check: every frame of the {s.num_episodes} episodes reads back, and all of it is finite")


TELEOP = {("device",): "--teleop"}
"""record and deploy: their ``device`` is the operator's teleop device (no torch device here to confuse it with)."""


def _record_flags():
    from workflow.record import RecordConfig

    return config_flags(RecordConfig, renamed=TELEOP)


def _record(values: dict) -> None:
    from hardware.teleop import DeviceUnavailable
    from robot.store import StoreError
    from workflow.record import RecordConfig, record as run_record

    try:
        report = run_record(build(RecordConfig, _record_flags(), values))
    except (ValueError, StoreError, DeviceUnavailable) as e:
        _fail(str(e))
    typer.echo(report.summary())


COMMANDS["record"] = lambda: generated_command(_record_flags(), with_safety(_record, _fail), extra=safety_parameters(), doc=(
    "Teleoperate (keyboard, SpaceMouse, gamepad or the scripted expert), label success, write episodes.\n\nEvery RecordConfig field is a flag."))


@app.command()
def view(
    store: Path = typer.Argument(..., help="Episode store directory (zarr)."),
    episode: Optional[int] = typer.Option(None, help="Episode to show (negative counts from the end); default 0."),
    all_: bool = typer.Option(False, "--all", help="Every episode of the store, one Rerun recording each."),
    save: Optional[Path] = typer.Option(None, help="Write an .rrd file instead of opening a viewer (headless); open it later with `rerun FILE.rrd`."),
    metrics: Optional[Path] = typer.Option(None, help="Run directory (or its metrics.jsonl) whose training curves to log next to the episodes."),
) -> None:
    """Rerun view of stored episodes (cameras, joints, actions, rewards, labels)."""
    from workflow.view import view_store

    report = _run_or_fail(view_store, store, episode=episode, all=all_, save=save, metrics=metrics)
    typer.echo(report.summary())
    if report.url is not None:  # no display: the data lives in this process's gRPC server
        import time

        try:
            typer.echo(f"serving until Ctrl-C; connect with `rerun --connect {report.url}` (or rerun with --save FILE.rrd)")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _imitation_flags():
    from workflow.imitation import ImitationConfig
    from workflow.presets import policy_preset

    aliases = {"policy.horizon": ("--horizon",), "policy.n_action_steps": ("--n-action-steps",), "policy.n_obs_steps": ("--n-obs-steps",),
               "policy.deterministic_sampler": ("--sampler",)}  # fmt: skip
    return config_flags(ImitationConfig, aliases=aliases, start={"policy": policy_preset("chunk")})  # help shows the default preset's values


PRESET_OPTION = inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Option(
    "chunk", help="Policy preset the --policy-* flags start from: 'chunk' (1-D U-Net over an action chunk; the defaults shown) or 'single' (MLP, one action)."))


def _train_imitation(values: dict) -> None:
    from workflow.imitation import ImitationConfig, train_imitation as run
    from workflow.presets import policy_preset

    report = _run_or_fail(lambda: run(build(ImitationConfig, _imitation_flags(), values, derived={"policy": policy_preset(values["preset"])})))
    _say(f"policy written to {report.policy} (train loss {report.final_train_loss:.4f}, "
         f"val loss {report.final_val_loss if report.final_val_loss is None else round(report.final_val_loss, 4)}, {report.minutes:.1f} min)")


GENERATED["imitation"] = lambda: generated_command(_imitation_flags(), _train_imitation, extra=[PRESET_OPTION], doc=(
    "Imitation: fit the diffusion policy to demonstrations (denoising MSE, EMA, validation on held-out episodes).\n\n"
    "Every ImitationConfig field is a flag; the policy's start from --preset."))


def _distill_flags():
    from workflow.distill import DistillConfig

    return config_flags(DistillConfig)


def _train_distill(values: dict) -> None:
    from workflow.distill import DistillConfig, train_distill as run

    report = _run_or_fail(lambda: run(build(DistillConfig, _distill_flags(), values)))
    _say(f"one-step head distilled (loss {report.final_loss:.5f}); policy written to {report.policy}")


GENERATED["distill"] = lambda: generated_command(_distill_flags(), _train_distill, doc="Consistency distillation into a one-step head.")


def _offline_flags():
    from workflow.offline import OfflineConfig

    return config_flags(OfflineConfig, aliases={"gate.horizon": ("--ope-horizon",), "gate.delta_relative": ("--delta",)})


def _train_offline(values: dict) -> None:
    from robot.checkpoint import load_checkpoint
    from policies.critics import CriticConfig
    from workflow.offline import OfflineConfig, train_offline as run
    from workflow.policy import KIND, build_from_checkpoint, policy_dir

    def go():
        ckpt = load_checkpoint(policy_dir(values["policy"]), kind=KIND)
        ta = build_from_checkpoint(ckpt)[0].config.n_action_steps  # a policy, whole
        return run(build(OfflineConfig, _offline_flags(), values, derived={"critic": CriticConfig.for_horizon(ta)}))  # no --task: the checkpoint's

    report = _run_or_fail(go)
    for r in report.rounds:
        rollouts = "no rollouts" if r.rollout_success is None else f"rollout success {r.rollout_success:.0%}"
        if r.reference_success is not None:
            rollouts += f" (reference {r.reference_success:.0%}{', refused' if r.refused else ', kept for its pace' if r.accepted_on_pace else ''})"
        if r.retrained_success is not None:
            rollouts += f", retrained {r.retrained_success:.0%}{' (refused)' if r.retrain_refused else ''}"
        _say(f"round {r.round}: {r.accepted}/{r.gate_checks} gate checks accepted, {rollouts}, policy {r.policy}")
    _say(f"final policy: {report.policy}; gate record: {Path(report.run) / 'gate.jsonl'}")


GENERATED["offline"] = lambda: generated_command(_offline_flags(), with_safety(_train_offline, _fail), extra=safety_parameters(), doc=(
    "Offline RL rounds: IQL critics, PPO on the denoising chain, AM-Q gate, verification in sim.\n\n"
    "Every OfflineConfig field is a flag; the critics' discount horizon follows the policy's chunk unless --critic-* says otherwise."))


def _online_flags():
    from workflow.online import OnlineConfig

    return config_flags(OnlineConfig)


def _train_online(values: dict) -> None:
    from workflow.online import OnlineConfig, train_online as run

    report = _run_or_fail(lambda: run(build(OnlineConfig, _online_flags(), values)))  # no --task: the checkpoint's
    _say(f"rollout success {report.success_first:.1%} -> {report.success_last:.1%} over {report.iterations} iterations ({report.robot_minutes:.1f} robot minutes); "
         f"kept {report.selected}; policy written to {report.policy}")


GENERATED["online"] = lambda: generated_command(_online_flags(), with_safety(_train_online, _fail), extra=safety_parameters(), doc=(
    "Online RL: PPO over denoising chains on live rollouts, one-step head distilled alongside.\n\n"
    "Every OnlineConfig field is a flag. Under `torchrun --nproc_per_node N` each process rolls out its share of the episodes in its own sim."))


def _pipeline_flags():
    from workflow.pipeline import PipelineConfig

    return config_flags(PipelineConfig)


def _run_pipeline(values: dict) -> None:
    from workflow.pipeline import PipelineConfig, run_pipeline

    _run_or_fail(run_pipeline, _run_or_fail(build, PipelineConfig, _pipeline_flags(), values))


COMMANDS["pipeline"] = lambda: generated_command(_pipeline_flags(), with_safety(_run_pipeline, _fail), extra=safety_parameters(), doc=(
    "The whole recipe end to end in sim, with gates, a per-stage table and a report.\n\nEvery PipelineConfig field is a flag."))


RUN_ARGUMENT = inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Argument(
    ..., metavar="RUN", help="Run directory of any stage (imitation, offline, online, distill) or a pipeline directory."))


def _diagnose_flags():
    from workflow.diagnostics.diagnose import DiagnoseConfig

    return config_flags(DiagnoseConfig, skip=frozenset({"run"}))


def _diagnose(values: dict) -> None:
    from workflow.diagnostics.diagnose import DiagnoseConfig, diagnose_run

    config = _run_or_fail(build, DiagnoseConfig, _diagnose_flags(), values, derived={"run": str(values["run"])})
    report = _run_or_fail(diagnose_run, config, log=typer.echo)
    typer.echo(report.table())
    candidates = report.candidates_table()
    if candidates:
        typer.echo("\n" + candidates)
    typer.echo(f"plots and diagnostics.json in {Path(report.json_path).parent}" + (f"; Rerun recording {report.rrd}" if report.rrd else ""))


COMMANDS["diagnose"] = lambda: generated_command(_diagnose_flags(), _diagnose, extra=[RUN_ARGUMENT], doc=(
    "Offline-workflow diagnostics: regime per stage, chosen checkpoint, advice, plots.\n\n"
    "Every DiagnoseConfig field is a flag (the FQE and rule thresholds included)."))

OUT_OPTION = inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
    None, help="Write every state's Q values and returns as JSON here."))


def _ranking_flags():
    from workflow.diagnostics.ranking import RankingConfig

    return config_flags(RankingConfig)


def _critic_ranking(values: dict) -> None:
    from workflow.diagnostics.ranking import RankingConfig, check_critic_ranking

    report = _run_or_fail(check_critic_ranking, _run_or_fail(build, RankingConfig, _ranking_flags(), values), log=typer.echo)
    typer.echo(report.table())
    if values["out"] is not None:
        typer.echo(f"per-state values in {report.save(values['out'])}")


COMMANDS["critic-ranking"] = lambda: generated_command(_ranking_flags(), with_safety(_critic_ranking, _fail), extra=[OUT_OPTION, *safety_parameters()], doc=(
    "Do the critics order a state's candidate chunks like their Monte Carlo returns in sim? What offline PPO relies on.\n\n"
    "Every RankingConfig field is a flag."))


def _eval_flags():
    from workflow.evaluate import EvalConfig

    return config_flags(EvalConfig)


def _eval(values: dict) -> None:
    from robot.report import format_table
    from workflow.evaluate import EvalConfig, evaluate_policy
    from workflow.policy import policy_task

    config = _run_or_fail(build, EvalConfig, _eval_flags(), values)
    task = _run_or_fail(policy_task, config.policy, config.task)
    common = dict(episodes=config.episodes, seed=config.seed, device=config.device, lanes=config.lanes)
    if config.samplers:
        if config.save or config.view or config.rrd:
            _fail("--save, --view and --rrd follow one sampler's episodes; give one --sampler with them")
        from workflow.paired import paired_table
        from workflow.policy import SAMPLERS

        unknown = [s for s in config.samplers if s not in SAMPLERS]
        if unknown:
            _fail(f"unknown sampler {', '.join(map(repr, unknown))}; known: {', '.join(SAMPLERS)}")
        reports = [_run_or_fail(evaluate_policy, config.policy, task, sampler=s, **common) for s in config.samplers]
        _say(paired_table(config.samplers, [r.successes for r in reports], [r.lengths for r in reports],
                          title=f"{config.policy} on {task}: {config.episodes} episodes from seed {config.seed}, every sampler on the same seeds"))  # fmt: skip
        return
    from workflow.paired import SeedOutcomes

    before = _run_or_fail(SeedOutcomes.read, config.against) if config.against else None  # a bad file fails before the episodes run
    if before is not None and before.seeds != tuple(range(config.seed, config.seed + config.episodes)):
        _fail(f"{config.against} ran on seeds {min(before.seeds)}-{max(before.seeds)} ({len(before.seeds)}); pass --seed {min(before.seeds)} "
              f"--episodes {len(before.seeds)} to compare on the same seeds")  # fmt: skip
    report = _run_or_fail(evaluate_policy, config.policy, task, sampler=config.sampler, save=config.save, view=config.view, rrd=config.rrd,
                          critics=config.critics, **common)  # fmt: skip
    outcomes = SeedOutcomes(str(config.policy), config.sampler, report.seeds, report.successes, report.lengths, report.returns)
    if config.outcomes:
        outcomes.write(config.outcomes)
    if report.inference_ms_mean is None and config.lanes > 1:
        _say(f"inference ms: not timed, {config.lanes} lanes planned their chunks in batches; --lanes 1 times one chunk at a time")
    _say(format_table(
        ["task", "sampler", "episodes", "success", "return", "length", "inference ms (mean)", "inference ms (p95)", "safety interventions"],
        [[report.task, report.sampler, report.episodes, f"{report.success_rate:.1%}", report.mean_return, report.mean_length, report.inference_ms_mean,
          report.inference_ms_p95, ", ".join(f"{k} {v}" for k, v in report.safety.items()) or "none"]],
    ))
    if before is not None:
        _say(_run_or_fail(outcomes.table, before))


COMMANDS["eval"] = lambda: generated_command(_eval_flags(), with_safety(_eval, _fail), extra=safety_parameters(),
                                              doc="Success rate, return and latency of a policy in sim.\n\nEvery EvalConfig field is a flag.")


def _deploy_flags():
    from workflow.deploy import DeployConfig

    return config_flags(DeployConfig, renamed=TELEOP)


def _deploy(values: dict) -> None:
    from hardware.drivers.contract import ArmFaultError
    from hardware.teleop import DeviceUnavailable
    from workflow.deploy import DeployConfig, deploy as run_deploy

    config = _run_or_fail(build, DeployConfig, _deploy_flags(), values)
    try:  # an unreachable or faulted arm, a dead server or a missing device: one line, not a traceback
        report = _run_or_fail(run_deploy, config)
    except (ConnectionError, ArmFaultError, DeviceUnavailable) as e:
        _fail(str(e))
    typer.echo(report.table())
    typer.echo(f"episodes stored in {report.store} (source = deployment)")
    if report.stopped_by == "estop":
        _fail("stopped by the e-stop; it stays latched on the robot until cleared there")


COMMANDS["deploy"] = lambda: generated_command(_deploy_flags(), with_safety(_deploy, _fail), extra=safety_parameters(), doc=(
    "The on-robot runner: fixed-rate loop, chunk queue with latency compensation, safety layer, e-stop, records what it does.\n\n"
    "Every DeployConfig field is a flag."))


def _serve(
    robot: str = typer.Option("sim:push", help="Robot spec to serve (sim:push, ur5e:IP, ...; see hardware.registry)."),
    port: int = typer.Option(8765, min=0, max=65535, help="TCP port; 0 picks a free one (printed)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback exposes the arm to that network."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the shared secret token; default the ROBOT_TOKEN variable."),
    watchdog: float = typer.Option(0.5, min=0.001, help="Seconds without a command after which the arm holds."),
    cameras: str = typer.Option("", help="Comma-separated sim cameras to serve (sim robots only)."),
    image_size: int = typer.Option(84, min=16, help="Sim camera image side, pixels."),
) -> None:
    """Robot-side server so a policy on another computer can drive the arm (one authenticated client at a time)."""
    from hardware.remote.serve import exposure_warning, read_token, serve as run, token_file_warning
    from hardware.remote.server import ServerConfig

    token, _ = _run_or_fail(read_token, token_file)
    for warning in (exposure_warning(host, port), token_file_warning(token_file)):
        if warning:
            typer.secho(warning, fg=typer.colors.RED, bold=True, err=True)
    options = {"cameras": tuple(c for c in cameras.split(",") if c), "image_size": image_size} if cameras else {}
    config = _run_or_fail(ServerConfig, host=host, port=port, watchdog_timeout_s=watchdog)
    try:
        _run_or_fail(run, robot, token, config, robot_options=options, echo=typer.echo)
    except OSError as e:
        _fail(str(e))


# the served arm's safety layer is the one that decides (clients cannot override it): its --safety-* flags are here
COMMANDS["serve"] = lambda: generated_command([], with_safety(lambda values: _serve(**values), _fail), doc=_serve.__doc__,
                                              extra=[*inspect.signature(_serve).parameters.values(), *safety_parameters()])


@app.command()
def learn(
    port: int = typer.Option(8766, min=0, max=65535, help="TCP port; 0 picks a free one (printed)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback by default (reach it through an SSH tunnel)."),
    torch_device: str = typer.Option("cpu", help="Where the updates run: cpu, cuda, cuda:N."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the shared secret token; default the ROBOT_TOKEN variable."),
) -> None:
    """Online RL's learner for a robot computer elsewhere (`robot train online --learner HOST:PORT`): runs each iteration's update."""
    from hardware.remote.serve import read_token, token_file_warning
    from workflow.learner_link import LearnerServerConfig, serve_learner
    from workflow.run import resolve_device

    token, _ = _run_or_fail(read_token, token_file)
    warning = token_file_warning(token_file)
    if warning:
        typer.secho(warning, fg=typer.colors.RED, bold=True, err=True)
    _run_or_fail(resolve_device, torch_device)
    try:
        serve_learner(LearnerServerConfig(host=host, port=port, device=torch_device), token, echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo("learner stopped")
    except OSError as e:
        _fail(str(e))


@app.command()
def tasks(
    name: Optional[str] = typer.Argument(None, help="One task to show with every feature's entry names: any --task value, pkg.module:factory included."),
) -> None:
    """Every simulated task: observation and action features, cameras, scripted expert, episode limit, where it comes from."""
    from sim.catalog import describe_task, task_details, tasks_table
    from sim.registry import ENTRY_POINT_GROUP, FAMILIES, FAMILY_USAGE, resolve_task, task_names

    if name is not None:
        source = _run_or_fail(resolve_task, name).source
        try:
            summary = describe_task(name)
        except Exception as e:  # the task's own code or its simulator: one line, not its traceback
            _fail(f"task {name} ({source}): its scene does not build: {type(e).__name__}: {e}")
        typer.echo(tasks_table([summary]) + "\n\n" + task_details(summary))
        return
    summaries = []
    for n in task_names():  # builds each scene once (robosuite's take a second or two)
        try:
            summaries.append(describe_task(n))
        except Exception as e:
            typer.secho(f"warning: task {n}: its scene does not build, left out: {type(e).__name__}: {e}", fg=typer.colors.YELLOW, err=True)
    typer.echo(tasks_table(summaries, title="tasks (images come with --cameras; `robot tasks NAME` names every feature's entries)"))
    typer.echo("\nfamilies, tasks by prefix (`robot tasks <prefix>:<name>` shows one): " + "; ".join(FAMILY_USAGE.get(f, f"{f}:<name>") for f in FAMILIES))
    typer.echo(f"\nadd one: sim.registry.register_task(name, factory) in your code, an entry point in the {ENTRY_POINT_GROUP!r} group "
               "of an installed package, or --task pkg.module:factory on any command (README: Bring your own task)")


CONVERT_PATHS = [
    inspect.Parameter("src", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Argument(
        ..., metavar="SRC", help="Dataset to read: LeRobot v3 directory, robomimic .hdf5 file, or our zarr store.")),
    inspect.Parameter("dst", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Argument(
        ..., metavar="DST", help="Where to write: our zarr store (imports) or a new LeRobot v3 directory (exports).")),
]


def _convert_flags():
    from workflow.convert import ConvertConfig

    return config_flags(ConvertConfig, skip=frozenset({"src", "dst"}), renamed={("src_format",): "--from", ("dst_format",): "--to"})


def _convert(values: dict) -> None:
    from workflow.convert import ConvertConfig, convert as run

    config = _run_or_fail(build, ConvertConfig, _convert_flags(), values, derived={"src": values["src"], "dst": values["dst"]})
    typer.echo(_run_or_fail(run, config).summary())


COMMANDS["convert"] = lambda: generated_command(_convert_flags(), _convert, extra=CONVERT_PATHS, doc=(
    "Import LeRobot v3 / robomimic HDF5 into an episode store, or export a store to LeRobot v3.\n\nEvery ConvertConfig field is a flag."))


def main(argv: Optional[list[str]] = None) -> None:
    import os
    import signal

    # Ctrl-C (SIGINT) stops every command cleanly, even when started from a shell that
    # ignores SIGINT for background jobs (`cmd &` in a script): Python keeps an inherited
    # "ignore" and would never raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering; must precede any mujoco import
    # OpenMP threads that spin while waiting made training 10-25x slower whenever another
    # process shared the CPU (docs/RESULTS.md); passive waiting costs nothing when alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # One intra-op thread unless the user sets OMP_NUM_THREADS: the kit's networks are small, and on a 2-core machine
    # with nothing else running, torch's default two threads trained imitation at 12.0 steps/s against one thread's
    # 16.8, on twice the CPU (docs/RESULTS.md, session 26). The kit scales out with lanes and torchrun instead.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app(args=argv)


if __name__ == "__main__":
    main()
