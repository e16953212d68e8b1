"""
C{--config FILE}: a TOML file of options, turned into command-line
arguments, so that the command line's own parsing and validation (one
validator) read them.  A key is a long option's name without its dashes
(C{upstream}, C{health-path}); a repeatable option takes a list.

C{tomllib} names the line of a syntax error but gives no line for a key:
an unknown key's line is found by scanning the text.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Collection, Mapping
from typing import Any

from attrs import frozen

from .._config import ConfigError, UnreadableFile

#: The option a file's problems are reported under.
OPTION = "--config"
#: The options given any number of times, each a list.
REPEATABLE = (
    "listen",
    "upstream",
    "spawn",
    "require-idempotency-key",
    "identity-header",
    "rate-limit",
    "max-concurrent",
)
#: The options an environment variable sets, over a config file's value.
ENV_OVERRIDES = {"upstream": "SORA2PROXY_UPSTREAM", "identity-header": "SORA2PROXY_IDENTITY_HEADERS"}
#: The command line's options that a file cannot set.
_INTERNAL = frozenset({"config", "worker-index"})


@frozen
class OptionKinds:
    """
    The names of the command line's long options, by kind.

    @ivar flags: options without a value (C{dev}).
    @ivar parameters: options with one value (C{attempts}).
    @ivar repeatable: options given any number of times (C{upstream}).
    """

    flags: frozenset[str]
    parameters: frozenset[str]
    repeatable: frozenset[str]


def option_kinds(options: Any) -> OptionKinds:
    """
    The options a config file may set: those of C{options} (a
    L{twisted.python.usage.Options}) but C{--config} and C{--worker-index}.
    """
    return OptionKinds(
        flags=frozenset(flag[0] for flag in options.optFlags) - _INTERNAL,
        parameters=frozenset(parameter[0] for parameter in options.optParameters) - _INTERNAL,
        repeatable=frozenset(REPEATABLE),
    )


def arguments_from_file(path: str, options: Any, environ: Mapping[str, str], *, starting: bool) -> list[str]:
    """
    The arguments of the config file at C{path}, less those that the
    command line (parsed into C{options}) or the environment give.

    @param starting: see L{read_text}.
    """
    skip = {name for name in REPEATABLE if options[name]}
    skip.update(name for name, variable in ENV_OVERRIDES.items() if environ.get(variable))
    if options["worker-index"] is not None:
        skip.add("spawn")  # the parent of the workers runs them
    return file_arguments(path, read_text(path, starting=starting), option_kinds(options), skip)


def read_text(path: str, *, starting: bool) -> str:
    """
    The file's text.

    @param starting: at start-up a file that cannot be read is
        L{UnreadableFile} (exit 78); on reload a L{ConfigError}.
    """
    try:
        with open(path, "rb") as file:
            return file.read().decode("utf-8")
    except OSError as e:
        error = UnreadableFile if starting else ConfigError
        raise error(OPTION, f"cannot read {path!r} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(OPTION, f"{path!r} is not UTF-8 text") from None


def file_arguments(path: str, text: str, kinds: OptionKinds, skip: Collection[str] = ()) -> list[str]:
    """
    The file's options as command-line arguments (C{--name=value}), in the
    file's order.

    @param skip: options left out (given on the command line or by the environment).
    @raise ConfigError: the file is not TOML, or a key is not an option or
        holds a value of the wrong kind; the message names the line.
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(OPTION, f"{path}: {e}") from None
    arguments: list[str] = []
    for key, value in table.items():
        where = f"{path} line {line_of(text, key)}"
        if key == "config":
            raise ConfigError(OPTION, f"{where}: a config file cannot name another one")
        if key not in kinds.flags | kinds.parameters | kinds.repeatable:
            raise ConfigError(OPTION, f"{where}: {key!r} is not an option{_close(key, kinds)}")
        if key not in skip:
            arguments.extend(_arguments_of(key, value, kinds, where))
    return arguments


def _arguments_of(key: str, value: Any, kinds: OptionKinds, where: str) -> list[str]:
    if key in kinds.flags:
        if not isinstance(value, bool):
            raise ConfigError(OPTION, f"{where}: {key} takes true or false, got {value!r}")
        return [f"--{key}"] if value else []
    if key in kinds.repeatable:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(OPTION, f"{where}: {key} takes a list of strings, got {value!r}")
        return [f"--{key}={v}" for v in values]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(OPTION, f"{where}: {key} takes a string or a number, got {value!r}")
    return [f"--{key}={value}"]


def _close(key: str, kinds: OptionKinds) -> str:
    names = sorted(kinds.flags | kinds.parameters | kinds.repeatable)
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def line_of(text: str, key: str) -> int:
    """
    The line where top-level C{key} is set (a bare, quoted or dotted key,
    or a table header), counted from 1; 0 when it cannot be found.
    """
    name = re.escape(key)
    pattern = re.compile(rf"""^\s*\[*\s*(?:{name}|"{name}"|'{name}')\s*[=.\]]""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 0
