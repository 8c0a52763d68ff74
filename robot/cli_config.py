"""Command-line options generated from the typed config dataclasses.

Each field of a stage's config (nested configs included: ``gate.horizon`` is ``--gate-horizon``) becomes one
flag whose help is the field's docstring, so a field is typed once, in its dataclass, and every field can be
set. A flag left out keeps the value the command starts from: the field's default, or what the command
derives at run time (offline RL's critic horizon from the policy's chunk), so help shows the dataclass default.

Types map to flags as: ``bool`` to ``--x/--no-x``; ``int``, ``float``, ``str`` as they are; a ``Literal`` to a
string checked by the config; ``tuple[...]`` to a comma-separated list; ``X | None`` to ``X`` (``none`` sets
None); nested dataclasses to prefixed flags. Fields of any other type are listed in ``skip`` by the command.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import typer

RENAMED = {("device",): "--torch-device"}
"""Fields whose flag name says more than the field's: ``--device`` alone could be a teleop device."""
NONE_WORDS = ("none", "null")
"""What a user types for None on an optional field (``--rollout-std none``)."""


@dataclass(frozen=True)
class Flag:
    """One generated option: the field it sets and how it reads."""

    path: tuple[str, ...]
    """Field names from the top config down (``("gate", "horizon")``)."""
    hint: Any
    """The field's type annotation."""
    default: Any
    """The dataclass default (shown in help; ``dataclasses.MISSING`` for a required field)."""
    help: str
    panel: str
    """Help section: the config's or the nested config's name."""
    aliases: tuple[str, ...] = ()
    flag_name: str | None = None
    """The flag when it is not the field's own name (``RENAMED``)."""

    @property
    def name(self) -> str:
        return self.flag_name or "--" + "-".join(self.path).replace("_", "-")

    @property
    def param(self) -> str:
        """The Python parameter name of the generated command."""
        return "__".join(self.path)

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), first paragraph, one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr):
                if isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                    docs[node.target.id] = " ".join(after.value.value.strip().split("\n\n")[0].split())
    return docs


def config_flags(cls: type, *, skip: frozenset[str] = frozenset(), aliases: Mapping[str, tuple[str, ...]] | None = None,
                 start: Mapping[str, Any] | None = None, prefix: tuple[str, ...] = (), panel: str | None = None,
                 renamed: Mapping[tuple[str, ...], str] = RENAMED) -> list[Flag]:  # fmt: skip
    """One :class:`Flag` per leaf field of ``cls``; ``skip``, ``aliases`` and ``start`` are keyed by dotted path.
    ``start`` names a nested config the command starts from (a preset), whose values help shows as defaults.
    ``renamed`` gives fields a flag name other than their own (the field's own name stays as an alias)."""
    aliases, start = aliases or {}, start or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags: list[Flag] = []
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        dotted = ".".join(path)
        if dotted in skip:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            nested_start = {k[len(f.name) + 1 :]: v for k, v in start.items() if k.startswith(f.name + ".")}
            if f.name in start:  # the command starts from this config: its fields are the defaults shown
                nested_start |= {g.name: getattr(start[f.name], g.name) for g in dataclasses.fields(hint)}
            flags += config_flags(hint, skip=skip, aliases=aliases, start=nested_start, prefix=path, panel=f"{hint.__name__} ({dotted})", renamed=renamed)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        default = start.get(f.name, default)
        if _leaf(hint) is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {hint}; skip it or give it one")
        old_name = ("--" + dotted.replace("_", "-"),) if path in renamed else ()  # the name scripts used before
        flags.append(Flag(path, hint, default, docs.get(f.name, ""), panel or cls.__name__, (*aliases.get(dotted, ()), *old_name), renamed.get(path)))
    return flags


def _leaf(hint: Any) -> Any:
    """The Python type a flag parses into (str for lists and choices), or None when there is no flag form."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _leaf(rest[0]) if len(rest) == 1 else None
    if hint in (bool, int, float, str, Path):
        return hint
    if origin is typing.Literal or origin is tuple or hint is tuple:
        return str
    return None


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _shown_default(flag: Flag) -> str:
    value = flag.default
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, bool):
        return flag.name if value else "--no-" + flag.name[2:]
    return "none" if value is None else str(value)


def _choices(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((_choices(a) for a in typing.get_args(hint) if a is not type(None)), ())
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def parameters(flags: list[Flag]) -> list[inspect.Parameter]:
    """Typer parameters for ``flags``: every optional flag defaults to None (unset), so the command can tell
    a flag the user gave from the value it derives itself."""
    params = []
    for flag in flags:
        leaf = _leaf(flag.hint)
        help_text = flag.help
        choices = _choices(flag.hint)
        if choices:
            help_text += f" One of: {', '.join(map(str, choices))}."
        if typing.get_origin(flag.hint) is tuple or flag.hint is tuple:
            help_text += " Comma-separated."
        if _optional(flag.hint):
            help_text += " 'none' unsets it."
        if flag.required:
            option = typer.Option(..., flag.name, *flag.aliases, help=help_text, rich_help_panel=flag.panel)
        else:
            help_text += f" (default: {_shown_default(flag)})"
            decls = (f"{flag.name}/--no-{flag.name[2:]}",) if leaf is bool else (flag.name,)
            option = typer.Option(None, *decls, *flag.aliases, help=help_text, rich_help_panel=flag.panel, show_default=False)
        kind = str if _optional(flag.hint) and leaf is not bool else leaf  # 'none' must parse
        params.append(inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind if flag.required else Optional[kind]))
    return params


def parse(flag: Flag, raw: Any) -> Any:
    """A flag's command-line value as the field's type (a ``ValueError`` naming the flag when it is not one)."""
    hint = flag.hint
    if _optional(hint):
        if isinstance(raw, str) and raw.strip().lower() in NONE_WORDS:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if typing.get_origin(hint) is tuple or hint is tuple:
            args = typing.get_args(hint)
            item = args[0] if args else str
            return tuple(item(p.strip()) for p in str(raw).split(",") if p.strip())
        if hint in (int, float, Path) and isinstance(raw, str):
            return hint(raw)
    except ValueError:
        raise ValueError(f"{flag.name}: expected {'a comma-separated list' if typing.get_origin(hint) is tuple else hint.__name__}, got {raw!r}") from None
    return raw


def build(cls: type, flags: list[Flag], values: Mapping[str, Any], derived: Mapping[str, Any] | None = None) -> Any:
    """``cls`` from its defaults, then ``derived`` (dotted path -> value or nested config the command computed),
    then every flag the user gave (``values``: parameter name -> raw value, None = not given)."""
    given = {".".join(f.path): parse(f, values[f.param]) for f in flags if values.get(f.param) is not None}
    direct, nested = _split({**(derived or {}), **given})
    for name, settings in nested.items():
        start = direct.get(name)
        if start is None:
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            start = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        direct[name] = _apply(start, settings)
    return cls(**direct)


def _split(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Dotted settings as this level's fields and, per nested field, the settings below it."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    return direct, nested


def _apply(config: Any, settings: Mapping[str, Any]) -> Any:
    """``config`` with dotted ``settings`` replaced, nested configs included (each re-validated)."""
    direct, nested = _split(settings)
    for name, below in nested.items():
        direct[name] = _apply(direct.get(name, getattr(config, name)), below)
    return dataclasses.replace(config, **direct)


def generated_command(
    flags: list[Flag], run: Callable[[dict[str, Any]], None], *, doc: str, extra: list[inspect.Parameter] = ()
) -> Callable[..., None]:
    """A function typer can register: its signature is ``extra`` then one parameter per flag; it calls
    ``run`` with every parameter's value by name."""

    def command(**kwargs: Any) -> None:
        run(kwargs)

    params = [*extra, *parameters(flags)]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command
