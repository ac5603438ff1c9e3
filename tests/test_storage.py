import hashlib
import json
import os

import pytest

from emojich.foundation.storage import (
    atomic_path,
    dumps_json,
    remove_stale_temporaries,
    sha256_file,
    write_json_atomic,
)


def test_atomic_path_replaces_only_on_success(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert dest.read_text() == "old"
    assert list(tmp_path.iterdir()) == [dest]  # the temporary was cleaned up

    with atomic_path(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


def test_json_is_deterministic_and_keeps_cyrillic(tmp_path):
    text = dumps_json({"b": 1, "a": "ёжик"})
    assert text == '{\n  "a": "ёжик",\n  "b": 1\n}\n'
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"emoji" * 100_000)
    assert sha256_file(path) == hashlib.sha256(b"emoji" * 100_000).hexdigest()


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".a.png.x1.tmp").write_text("")
    (tmp_path / "keep.png").write_text("")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.png"]
