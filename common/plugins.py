"""User code by reference: ``package.module:attribute`` or a name in an entry-point group (no package edits)."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from typing import Any

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_import_path(text: str) -> bool:
    """``my_pkg.my_module:MyStrategy`` (not a file path such as ``models/net.py:build``)."""
    return bool(IMPORT_PATH.fullmatch(text)) and not text.split(":", 1)[0].endswith(".py")


def load_object(spec: str, what: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted); ``ValueError`` says what is missing."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{what} {spec!r}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    return target


def entry_point(group: str, name: str) -> Any | None:
    """The object an installed package registers as ``name`` in entry-point ``group``, or None."""
    for point in importlib.metadata.entry_points(group=group):
        if point.name == name:
            return point.load()
    return None


def entry_point_names(group: str) -> list[str]:
    return sorted(point.name for point in importlib.metadata.entry_points(group=group))
