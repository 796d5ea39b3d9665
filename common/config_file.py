"""Settings from a TOML file (``--config``), with flags > environment > file > defaults (pure but for reading it).

Every flag has a key: its name without the leading dashes, ``-`` written as ``_`` (``--min-nodes`` is
``min_nodes``). Top-level keys apply to every command; a table named after the command (``[server]``,
``[node]``) applies to that command only, over the top level, so one file can serve a whole federation.
A key that no flag of the command has is an error, not silently ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 1024 * 1024
SECRET_SETTINGS = frozenset({"kafka_sasl_password", "dashboard_token"})  # never printed, never written to a history
SOURCE_FLAG, SOURCE_ENV, SOURCE_FILE, SOURCE_DEFAULT = "flag", "environment", "file", "default"

logger = logging.getLogger(__name__)


def config_path_from(argv: Sequence[str]) -> Path | None:
    """``--config PATH`` (or ``--config=PATH``) from the command line, else ``FL_CONFIG``."""
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if token.startswith("--config="):
            return Path(token.split("=", 1)[1])
    env = os.environ.get("FL_CONFIG", "").strip()
    return Path(env) if env else None


def settings_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action of every setting (not help, --config, --print-config)."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in ("help", "config", "print_config")}


def load_config_file(path: Path, parser: argparse.ArgumentParser, section: str) -> dict[str, Any]:
    """The file's settings for this command, converted and checked like their flags; ``ValueError`` says what."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: {size} bytes, more than the {MAX_CONFIG_BYTES} a config file may have")
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config {path}: not valid TOML ({exc})") from None
    actions = settings_actions(parser)
    tables = {k for k, v in document.items() if isinstance(v, dict)}
    merged = {k: v for k, v in document.items() if k not in tables}
    merged.update(document.get(section, {}))
    values: dict[str, Any] = {}
    for key, value in merged.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise ValueError(f"--config {path}: no setting {key!r} for this command (settings of one command only "
                             f"go under [{section}]; see --print-config)")
        values[dest] = convert(action, value, f"--config {path}: {key}")
    return values


def convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A TOML value as the flag's parser would have made it from text."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false")
        return value
    kind: Any = action.type or str
    try:
        if isinstance(value, list):
            texts = [str(v) for v in value]
            converted = kind(",".join(texts)) if isinstance(action.default, tuple) else [kind(t) for t in texts]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            converted = kind(str(value))
        else:
            raise ValueError(f"a {type(value).__name__} is not a value for it")
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {converted!r} is not one of {list(action.choices)}")
    return converted


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      section: str) -> tuple[argparse.Namespace, dict[str, str]]:
    """Parse ``argv`` with a config file's settings under the flags and the environment.

    Returns the settings and, per setting, where its value came from (for the start-up log)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    actions = settings_actions(parser)
    path = config_path_from(argv)
    try:
        from_file = load_config_file(path, parser, section) if path is not None else {}
    except ValueError as exc:
        parser.error(str(exc))
    from_env = {dest for dest, action in actions.items()
                if any(os.environ.get(name, "").strip() for name in getattr(action, "env_vars", ()))}
    parser.set_defaults(**{dest: v for dest, v in from_file.items() if dest not in from_env})
    args = parser.parse_args(argv)
    given = {action.dest for action in actions.values()
             if any(t == s or t.startswith(s + "=") for t in argv for s in action.option_strings)}
    sources = {}
    for dest in actions:
        if dest in given:
            sources[dest] = SOURCE_FLAG
        elif dest in from_env:
            sources[dest] = SOURCE_ENV
        elif dest in from_file:
            sources[dest] = f"{SOURCE_FILE} {path}"
        else:
            sources[dest] = SOURCE_DEFAULT
    return args, sources


def log_settings(args: argparse.Namespace, sources: dict[str, str]) -> None:
    """One line per setting that is not a default: its value (secrets masked) and where it came from."""
    for dest in sorted(sources):
        if sources[dest] == SOURCE_DEFAULT:
            continue
        value = "***" if dest in SECRET_SETTINGS and getattr(args, dest) else shown(getattr(args, dest))
        logger.info("setting %s = %s (%s)", dest, value, sources[dest])


def shown(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def config_template(parser: argparse.ArgumentParser, section: str) -> str:
    """A complete, commented TOML file of every setting with its current default (``--print-config``)."""
    lines = [f"# {parser.prog} settings. Every flag has a key here: its name without the dashes, - as _.",
             "# Precedence: command-line flags > environment (FL_...) > this file > built-in defaults.",
             f"# Keys may also go under a [{section}] table, so that one file serves server and nodes.", ""]
    for dest, action in settings_actions(parser).items():
        text = " ".join((action.help or "").split())
        lines.append(f"# {action.option_strings[0]}: {text}")
        if dest in SECRET_SETTINGS:
            lines.append(f"# {dest} = \"...\"  (better: the environment, never a file in version control)")
        elif action.default is None:
            lines.append(f"# {dest} =")
        else:
            lines.append(f"{dest} = {toml_value(action.default)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string
