"""The README's flag tables say what the parsers do: every flag exists, every flag is listed, defaults agree."""

import re
from pathlib import Path

import pytest

from fl_node.cli import build_parser as node_parser
from fl_node.sim_cli import build_parser as sim_parser
from fl_server.aggregator.cli import build_parser as aggregator_parser
from fl_server.audit_cli import build_parser as audit_parser
from fl_server.cli import build_parser as server_parser
from fl_server.decryptor_cli import build_parser as decryptor_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# A default cell says "none"/"off"/"" for None, lists several values for several flags, or names another flag.
EMPTY = {"", "none", "off"}


def table(title: str) -> list[tuple[list[str], list[str]]]:
    """(flags, defaults) per row of the table whose header starts with ``title``."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {title} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        flags = re.findall(r"(?<![a-z0-9-])(--[a-z0-9-]+)", cells[0])
        flags = [f for f in flags if not f.endswith("-")]  # "--kafka-ssl-*" families are checked by name below
        rows.append((flags, [d.strip() for d in cells[1].split(",")] if cells[1] else []))
    return rows


def shown(value: object) -> str:
    if value is None or value == () or value is False:
        return ""
    return str(value)


@pytest.mark.parametrize(("title", "parser"), [("fl-server flag", server_parser), ("fl-node flag", node_parser),
                                               ("fl-audit flag", audit_parser),
                                               ("fl-decryptor flag", decryptor_parser),
                                               ("fl-aggregator flag", aggregator_parser), ("fl-sim flag", sim_parser)])
def test_every_flag_in_the_table_exists_and_its_default_is_the_parsers(title, parser, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("FL_") or name == "KAFKA_BOOTSTRAP":
            monkeypatch.delenv(name)
    actions = {flag: action for action in parser()._actions for flag in action.option_strings}
    rows = table(title)
    listed = {flag for flags, _ in rows for flag in flags}
    assert listed <= set(actions), sorted(listed - set(actions))
    families = re.findall(r"`(--[a-z0-9-]+)-\*`", README)
    if title == "fl-server flag":  # "--strategy and its options": the Strategies table lists those
        from fl_server.strategy_options import STRATEGY_FLAGS

        listed |= set(STRATEGY_FLAGS)
    unlisted = [flag for flag in actions if flag.startswith("--") and flag not in listed and flag != "--help"
                and not any(flag.startswith(family + "-") for family in families)]
    assert not unlisted, f"flags missing from the README's {title!r} table: {unlisted}"
    for flags, defaults in rows:
        if len(defaults) != len(flags):
            continue  # one default for a group, or a prose default: checked by eye
        for flag, default in zip(flags, defaults, strict=True):
            want = shown(actions[flag].default)
            if default.startswith("`--") or "&lt;" in default:
                continue  # "defaults to another flag", or one made at run time (node-<random>)
            assert (default.lower() in EMPTY and want == "") or same(default, want), (flag, default, want)


def same(documented: str, actual: str) -> bool:
    try:
        return float(documented) == float(actual)
    except ValueError:
        return documented == actual
