"""qdiff_lib._io.atomic_write: whole or not at all."""

from __future__ import annotations

import pytest

from qdiff_lib._io import atomic_write


def test_writes_whole_file_and_creates_parent(tmp_path):
    path = atomic_write(tmp_path / "a" / "b.json", lambda f: f.write(b'{"x": 1}'))
    assert path.read_bytes() == b'{"x": 1}'
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_failure_keeps_previous_content_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"new and incomplete")
        raise KeyboardInterrupt  # an interrupt mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
