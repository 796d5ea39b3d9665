"""Atomic replacement: the old file or the new one, never half; nothing left behind on failure."""

import stat

import pytest

from common.atomic import OWNER_ONLY, atomic_binary_file, write_text_atomic


def test_replaces_the_file_and_leaves_no_temporary_behind(tmp_path):
    path = tmp_path / "sub" / "doc.txt"
    write_text_atomic(path, "one\n")
    write_text_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["doc.txt"]


def test_a_failure_keeps_the_old_content_and_removes_the_temporary(tmp_path):
    path = tmp_path / "arrays.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_binary_file(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["arrays.bin"]


def test_owner_only_files_are_never_readable_by_others(tmp_path):
    path = tmp_path / "n1.key"
    write_text_atomic(path, "00\n", encoding="ascii", permissions=OWNER_ONLY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
