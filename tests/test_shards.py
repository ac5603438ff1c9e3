import hashlib
import io
import tarfile

import pytest

from emojich.foundation.shards import (
    ShardError,
    ShardReader,
    ShardWriter,
    iter_shards,
    member_ref,
    shard_paths,
    write_shards,
)


def _items(count: int, size: int = 10) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (f"item-{i:03d}", {"rgb.png": bytes([i % 256]) * size, "mask.png": f"mask {i}".encode()})
        for i in range(count)
    ]


def _digests(folder) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in shard_paths(folder)]


def test_round_trip_in_key_order_whatever_the_input_order(tmp_path):
    items = _items(7)
    located = write_shards(tmp_path, "set", list(reversed(items)), max_items=3)
    assert [path.name for path in shard_paths(tmp_path)] == [
        "set-00000.tar",
        "set-00001.tar",
        "set-00002.tar",
    ]
    assert located["item-000"].name == "set-00000.tar" and located["item-006"].name == "set-00002.tar"
    assert list(iter_shards(tmp_path)) == items
    with ShardReader(tmp_path) as reader:
        assert reader.keys() == [key for key, _ in items]
        assert reader.kinds("item-004") == ["mask.png", "rgb.png"]
        assert reader.read("item-004", "rgb.png") == bytes([4]) * 10
        assert reader.ref("item-004", "mask.png") == member_ref(
            tmp_path / "set-00001.tar", "item-004", "mask.png"
        )
        assert "item-009" not in reader and len(reader) == 7
        with pytest.raises(ShardError, match=r"no member item-004\.rgba\.png"):
            reader.read("item-004", "rgba.png")


def test_equal_content_gives_identical_bytes_and_plain_tar_members(tmp_path):
    write_shards(tmp_path / "a", "set", _items(5), max_items=2)
    write_shards(tmp_path / "b", "set", _items(5), max_items=2)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    with tarfile.open(shard_paths(tmp_path / "a")[0]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "item-000.mask.png",
        "item-000.rgb.png",
        "item-001.mask.png",
        "item-001.rgb.png",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}


def test_a_shard_closes_at_max_bytes(tmp_path):
    items = [(f"k{i}", {"bin": b"x" * 100}) for i in range(5)]
    write_shards(tmp_path, "set", items, max_items=100, max_bytes=250)
    assert len(shard_paths(tmp_path)) == 2  # 3 items reach 300 bytes, the other 2 follow
    assert [key for key, _ in iter_shards(tmp_path)] == [f"k{i}" for i in range(5)]


@pytest.mark.parametrize("key", ["../up", "a/b", "dotted.key", "", "space key"])
def test_keys_that_could_escape_or_split_are_refused(tmp_path, key):
    with pytest.raises(ShardError, match="shard key"), ShardWriter(tmp_path, "set") as writer:
        writer.add(key, {"png": b"x"})


def test_keys_must_increase_and_a_failed_run_keeps_the_previous_set(tmp_path):
    write_shards(tmp_path, "set", _items(4), max_items=2)
    before = _digests(tmp_path)
    with (
        pytest.raises(ShardError, match="strictly increasing"),
        ShardWriter(tmp_path, "set", max_items=1) as writer,
    ):
        writer.add("item-100", {"png": b"new"})
        writer.add("item-101", {"png": b"new"})
        writer.add("item-050", {"png": b"late"})
    assert _digests(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set-00000.tar", "set-00001.tar"]  # no temporaries


def test_a_smaller_run_removes_stale_shards_of_its_prefix_only(tmp_path):
    write_shards(tmp_path, "set", _items(6), max_items=2)
    write_shards(tmp_path, "other", _items(1))
    write_shards(tmp_path, "set", _items(3), max_items=2)
    assert [p.name for p in shard_paths(tmp_path)] == ["other-00000.tar", "set-00000.tar", "set-00001.tar"]


def test_an_empty_set_writes_no_shard(tmp_path):
    assert write_shards(tmp_path, "set", []) == {}
    assert shard_paths(tmp_path) == [] and list(iter_shards(tmp_path)) == []
    assert len(ShardReader(tmp_path / "missing")) == 0


def test_foreign_member_names_are_reported(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../evil.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "set-00000.tar").write_bytes(buffer.getvalue())
    with pytest.raises(ShardError, match="unexpected shard member"):
        ShardReader(tmp_path)
    with pytest.raises(ShardError, match="unexpected shard member"):
        list(iter_shards(tmp_path))


def test_cli_extract_copies_one_member_and_names_its_shard(tmp_path, capsys):
    from emojich.cli import main as cli

    write_shards(tmp_path / "set", "set", _items(5), max_items=2)
    out = tmp_path / "x.png"
    assert cli(["extract", str(tmp_path / "set"), "item-003", "--kind", "rgb.png", "--out", str(out)]) == 0
    assert out.read_bytes() == bytes([3]) * 10
    assert "set-00001.tar:item-003.rgb.png" in capsys.readouterr().out
    assert cli(["extract", str(tmp_path / "set"), "item-003", "--out", str(out)]) == 2  # two kinds
    assert "mask.png, rgb.png" in capsys.readouterr().err
    assert cli(["extract", str(tmp_path / "set"), "item-009"]) == 2
    assert cli(["extract", str(tmp_path / "set"), "item-003", "--kind", "rgba.png"]) == 2
    with tarfile.open(tmp_path / "set" / "foreign.tar", "w") as tar:  # not written by this project
        tar.addfile(tarfile.TarInfo("../x"), io.BytesIO())
    capsys.readouterr()
    assert cli(["extract", str(tmp_path / "set"), "item-003", "--kind", "rgb.png"]) == 2
    assert "unexpected shard member" in capsys.readouterr().err
