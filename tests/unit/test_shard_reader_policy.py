"""Shard lists, grouping and the retry policy of the one shard reader: folders, sidecar files
left out with one notice, a repeated member that costs only itself, a file that is not a
tar skipped at once, skipped members counted once however often a shard is reread."""
from __future__ import annotations

import io
import logging
import tarfile

import pytest
import webdataset as wds

from data_pipeline.io import shard_reader
from data_pipeline.io.sample_grouping import group_samples, split_name
from data_pipeline.io.shard_list import ShardListError, expand_shards
from data_pipeline.io.shard_reader import ShardDamaged, checked_samples, read_shard
from data_pipeline.skips import Counters


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def sample_members(keys) -> list[tuple[str, bytes]]:
    return [(f"{k}.{ext}", f"{k} {ext}".encode()) for k in keys for ext in ("jpg", "txt")]


def test_a_folder_means_its_tar_files(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("b.tar", "a.tar", "notes.json", "c.parquet"):
        (shards / name).write_bytes(b"")
    assert expand_shards([str(shards)]) == [str(shards / "a.tar"), str(shards / "b.tar")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no \\*.tar shard"):
        expand_shards([str(tmp_path / "empty")], where="corpus x: shards")


def test_sidecars_caught_by_a_pattern_are_left_out_with_one_notice(tmp_path, caplog):
    # What img2dataset writes: per shard a tar, a parquet and a stats json.
    for shard in ("00000", "00001"):
        (tmp_path / f"{shard}.tar").write_bytes(b"")
        (tmp_path / f"{shard}.parquet").write_bytes(b"PAR1")
        (tmp_path / f"{shard}_stats.json").write_text("{}")
    caplog.set_level(logging.INFO, logger="data_pipeline")
    urls = expand_shards([str(tmp_path / "*")], where="corpus laion: shards")
    assert urls == [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]
    notices = [r for r in caplog.records if r.name.startswith("data_pipeline")]
    assert len(notices) == 1 and "corpus laion: shards: left out 4 files" in notices[0].getMessage()
    with pytest.raises(FileNotFoundError, match="matches only files that are not shards"):
        expand_shards([str(tmp_path / "*.parquet")])
    # A file named on its own is the user's choice: kept, and skipped when read if it is no tar.
    assert expand_shards([str(tmp_path / "00000.parquet")]) == [str(tmp_path / "00000.parquet")]


def test_unknown_url_schemes_are_refused_at_start_up():
    assert expand_shards(["https://h/a-{0..1}.tar", "pipe:cat x.tar", "gs://b/c.tar"]) == \
        ["https://h/a-0.tar", "https://h/a-1.tar", "pipe:cat x.tar", "gs://b/c.tar"]
    with pytest.raises(ShardListError, match="unknown scheme 's4'"):
        expand_shards(["s4://bucket/a.tar"])


def test_member_names_split_into_key_and_lowercased_extension():
    assert split_name("dir.v2/000000042.Caption.TXT") == ("dir.v2/000000042", "caption.txt")
    assert split_name("a.JPG") == ("a", "jpg")
    for name in ("noextension", ".hidden", "key.", "dir/"):
        assert split_name(name) is None


def test_a_repeated_member_costs_only_itself():
    members = sample_members(["a", "b"]) + [("b.jpg", b"second b jpg"), ("b.JPG", b"third")] + \
        sample_members(["c", "d"]) + [("README", b"no key")]
    skipped = []
    samples = list(group_samples(members, "u", lambda reason, detail: skipped.append(reason)))
    assert [s["__key__"] for s in samples] == ["a", "b", "c", "d"]
    assert samples[1]["jpg"] == b"b jpg"  # the first one is kept
    assert skipped == ["member_duplicate", "member_duplicate", "member_unnamed"]


def test_a_shard_with_a_repeated_member_mid_way_delivers_every_other_sample(tmp_path):
    # webdataset's writer, as real shards are made; then a stray second `jpg` for sample 2.
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        for i in range(5):
            writer.write({"__key__": f"{i:09d}", "jpg": b"j%d" % i, "txt": b"t%d" % i})
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members.insert(5, ("000000002.jpg", b"stray"))
    url = write_tar(tmp_path / "dup.tar", members)
    counters = Counters()
    got = list(read_shard(url, 0, counters, retries=0, retry_delay_s=0))
    assert [(i, s["__key__"], s["jpg"], s["txt"]) for i, s in got] == \
        [(i, f"{i:09d}", b"j%d" % i, b"t%d" % i) for i in range(5)]
    assert counters.as_dict() == {"member_duplicate": 1}


def count_opens(monkeypatch) -> list[str]:
    opened = []
    real = shard_reader.open_shard

    def counting(url):
        opened.append(url)
        return real(url)

    monkeypatch.setattr(shard_reader, "open_shard", counting)
    return opened


def test_a_file_that_is_not_a_tar_is_skipped_at_once_without_retry(tmp_path, monkeypatch):
    opened = count_opens(monkeypatch)
    for name, data in (("00000.parquet", b"PAR1" + bytes(2000) + b"PAR1"), ("00000_stats.json", b'{"count": 3}')):
        (tmp_path / name).write_bytes(data)
        counters = Counters()
        assert list(read_shard(str(tmp_path / name), 0, counters, retries=2, retry_delay_s=0)) == []
        assert counters.as_dict() == {"shard_not_tar": 1}
    assert len(opened) == 2  # once each
    # A damaged tar is not reread either; a failing stream is, `retries` times.
    good = write_tar(tmp_path / "g.tar", sample_members(["a", "b", "c"]))
    damaged = bytearray(open(good, "rb").read())
    damaged[2048 + 148] ^= 0x01  # the third header's checksum
    (tmp_path / "d.tar").write_bytes(bytes(damaged))
    counters, opened[:] = Counters(), []
    assert len(list(read_shard(str(tmp_path / "d.tar"), 0, counters, retries=2, retry_delay_s=0))) == 0
    assert counters.as_dict() == {"shard_corrupt": 1} and len(opened) == 1
    counters, opened[:] = Counters(), []
    list(read_shard(f"pipe:cat {tmp_path}/missing.tar", 0, counters, retries=2, retry_delay_s=0))
    assert counters.as_dict() == {"shard_retry": 2, "shard_unreadable": 1} and len(opened) == 3


def test_skipped_members_are_counted_once_across_retries_and_resumes(tmp_path):
    members = sample_members(["a", "b"]) + [("b.txt", b"again")] + sample_members(["c", "d", "e"])
    whole = open(write_tar(tmp_path / "w.tar", members), "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[:10 * 1024 + 300])  # 11 members of 1024 bytes: into the last one's header
    # A stream cut short (a pipe, a network) is read again.
    counters = Counters()
    got = [i for i, _ in read_shard(f"pipe:cat {cut}", 0, counters, retries=1, retry_delay_s=0)]
    assert got == [0, 1, 2, 3]  # e's last member is cut off, and with it sample e
    assert counters.as_dict() == {"member_duplicate": 1, "shard_retry": 1, "shard_unreadable": 1}
    # A local file that ends early is damaged: reading it again gives the same end.
    counters = Counters()
    assert [i for i, _ in read_shard(str(cut), 0, counters, retries=1, retry_delay_s=0)] == [0, 1, 2, 3]
    assert counters.as_dict() == {"member_duplicate": 1, "shard_corrupt": 1}
    # Resuming after sample b: its repeated member was counted by the first reading.
    counters = Counters()
    whole_path = str(tmp_path / "w.tar")
    assert [i for i, _ in read_shard(whole_path, 2, counters)] == [2, 3, 4]
    assert counters.as_dict() == {}
    assert [i for i, _ in read_shard(whole_path, 1, counters)] == [1, 2, 3, 4]
    assert counters.as_dict() == {"member_duplicate": 1}


def test_the_tools_reader_refuses_what_the_loader_would_skip(tmp_path):
    url = write_tar(tmp_path / "dup.tar", sample_members(["a"]) + [("a.txt", b"again")])
    with pytest.raises(ShardDamaged, match="member_duplicate"):
        list(checked_samples(url))
    (tmp_path / "x.parquet").write_bytes(b"PAR1" * 300)
    with pytest.raises(ShardDamaged, match="shard_not_tar"):
        list(checked_samples(str(tmp_path / "x.parquet")))


def test_a_pipe_that_fails_after_its_output_keeps_the_samples_it_sent(tmp_path):
    shard = write_tar(tmp_path / "a.tar", sample_members(["a", "b", "c", "d"]))
    counters = Counters()
    got = [sample["__key__"] for _, sample in read_shard(f"pipe:cat {shard}; exit 3", 0, counters, retries=1,
                                                         retry_delay_s=0)]
    assert got == ["a", "b", "c", "d"]  # each once: the retry starts after the samples delivered
    assert counters.as_dict() == {"shard_retry": 1, "shard_unreadable": 1}
