"""One settings table per service.

Each :class:`Setting` has a name, a default, a type and help text. A table is
turned into argparse flags (``--data-dir``) and environment variables
(``FLAMEWATCH_DATA_DIR``); flags win over the environment, which wins over the
default. The parsed result is a frozen namespace.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One documented setting of a service."""

    name: str  # snake_case; flag is --name-with-dashes, env is FLAMEWATCH_NAME
    default: Any
    help: str
    type: Callable[[str], Any] = str
    choices: Sequence[str] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "FLAMEWATCH_" + self.name.upper()


def parse_bool(text: str) -> bool:
    """'1/true/yes/on' or '0/false/no/off' (case-insensitive)."""
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


class Settings(Mapping[str, Any]):
    """Frozen, attribute-accessible parsed settings."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are frozen")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def replace(self, **kw: Any) -> Settings:
        d = dict(self._values)
        d.update(kw)
        return Settings(d)

    def __repr__(self) -> str:
        return f"Settings({dict(self._values)!r})"


def add_arguments(parser: argparse.ArgumentParser, table: Sequence[Setting]) -> None:
    """Add one flag per setting; defaults are resolved later so env can apply."""
    for s in table:
        kw: dict[str, Any] = {"dest": s.name, "default": None, "help": f"{s.help} (env {s.env}, default {s.default!r})"}
        if s.choices:
            kw["choices"] = list(s.choices)
        if s.type is parse_bool:
            # Boolean settings are also plain switches: `--fast` means `--fast true`.
            kw["nargs"], kw["const"] = "?", "true"
        parser.add_argument(s.flag, **kw)


def resolve(
    table: Sequence[Setting],
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Flags, then environment, then defaults. Raises ValueError naming the bad setting."""
    environ = os.environ if environ is None else environ
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    out: dict[str, Any] = {}
    for s in table:
        raw = given.get(s.name)
        source = s.flag
        if raw is None and s.env in environ:
            raw, source = environ[s.env], s.env
        if raw is None:
            out[s.name] = s.default
            continue
        if not isinstance(raw, str):
            out[s.name] = raw
            continue
        try:
            value = s.type(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"setting {source}={raw!r} is invalid: {e}") from None
        if s.choices and value not in s.choices:
            raise ValueError(f"setting {source}={raw!r} must be one of {', '.join(s.choices)}")
        out[s.name] = value
    return Settings(out)


def markdown_table(table: Sequence[Setting]) -> str:
    """A README table of a settings table."""
    rows = ["| flag | env | default | meaning |", "| --- | --- | --- | --- |"]
    for s in table:
        rows.append(f"| `{s.flag}` | `{s.env}` | `{s.default!r}` | {s.help} |")
    return "\n".join(rows)


def add_command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    table: Sequence[Setting],
    func: Callable[[argparse.Namespace], int],
    **parser_kw: Any,
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with one flag per setting of ``table``; ``func`` handles it."""
    p = subparsers.add_parser(name, **parser_kw)
    add_arguments(p, table)
    p.set_defaults(func=func)
    return p


def resolve_or_report(command: str, table: Sequence[Setting], args: argparse.Namespace) -> Settings | None:
    """``resolve`` for a CLI: on a bad setting print ``flamewatch COMMAND: why`` to stderr and
    return None (the caller exits 2)."""
    try:
        return resolve(table, args)
    except ValueError as e:
        print(f"flamewatch {command}: {e}", file=sys.stderr)
        return None
