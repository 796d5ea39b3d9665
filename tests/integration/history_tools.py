"""Checks of fl-history on history files that a real run produced."""

from __future__ import annotations

import csv
import struct

from fl_server.history_cli import main as fl_history
from tests.integration.harness import Federation


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", header[16:24])


def check_history_tools(federation: Federation, capsys) -> None:
    history_file = next(federation.history_dir.glob("*.json"))
    rounds = federation.history()["rounds"]
    capsys.readouterr()

    assert fl_history(["show", str(history_file)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + len(rounds)  # title, header, one row per round
    assert [line.split()[0] for line in table[2:]] == [str(r["round"]) for r in rounds]

    out = federation.tmp_path / "curves.png"
    assert fl_history(["plot", str(history_file), str(history_file), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    width, height = png_size(out)
    assert 600 <= width <= 3000 and 300 <= height <= 2000

    accuracies = [r["holdout"]["accuracy"] for r in rounds]
    target = round((accuracies[0] + accuracies[-1]) / 2, 6)
    expected_round = next(r["round"] for r in rounds if r["holdout"]["accuracy"] >= target)
    assert fl_history(["compare", str(history_file), "--target", f"{target:.6f}"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[1].split()
    assert row[-2] == str(expected_round)
    assert abs(float(row[3]) - accuracies[-1]) < 1e-4  # final accuracy

    csv_path = federation.tmp_path / "rounds.csv"
    assert fl_history(["export", str(history_file), "--csv", str(csv_path)]) == 0
    with csv_path.open() as handle:
        exported = list(csv.DictReader(handle))
    assert [float(r["holdout_accuracy"]) for r in exported] == accuracies

    truncated = federation.tmp_path / "truncated.json"
    truncated.write_text(history_file.read_text()[:100])
    assert fl_history(["show", str(truncated)]) == 2
    assert "truncated" in capsys.readouterr().err
