"""The shard tar reader against Python's tarfile (through webdataset), on every header
flavour the writers in use produce."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import time

import pytest
import webdataset as wds
from webdataset.tariterators import tar_file_iterator

from data_pipeline.io.tar_stream import TarFormatError, tar_members


def members(count: int = 7) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        key = f"sample_{i:04d}"
        out += [(f"{key}.jpg", bytes([i % 256]) * (i * 397 + (512 if i == 3 else 0))),  # sizes 0, 512, ...
                (f"{key}.json", b'{"i": %d}' % i), (f"{key}.txt", f"caption {i} ünï".encode())]
    return out


def archive(entries: list[tuple[str, bytes]], fmt: int, extra=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), time.time(), "someone"  # float mtime: a pax record
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def reference(data: bytes) -> list[tuple[str, bytes]]:
    return [(m["fname"], m["data"]) for m in tar_file_iterator(io.BytesIO(data))]


LONG = "d" * 120 + "/" + "n" * 130  # past ustar's 100-byte name field


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_members_are_those_tarfile_reads(fmt):
    entries = members()
    if fmt != tarfile.USTAR_FORMAT:
        entries.append((LONG + ".txt", b"long name"))
    entries.append(("some/dir/" + "p" * 90 + "/key.cls", b"7"))  # ustar keeps the directories in its prefix
    directory = tarfile.TarInfo("a_directory")
    directory.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("a_link")
    link.type, link.linkname = tarfile.SYMTYPE, "sample_0000.jpg"
    data = archive(entries, fmt, extra=(directory, link))
    assert list(tar_members(io.BytesIO(data))) == reference(data) == entries
    # a stream that can peek (a local file) is read without the put-back wrapper
    assert list(tar_members(io.BufferedReader(io.BytesIO(data)))) == entries


def test_webdataset_writer_shards_and_meta_names():
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        for i in range(5):
            writer.write({"__key__": f"k{i}", "jpg": b"x" * (1000 + i), "txt": b"t%d" % i})
    meta = tarfile.TarInfo("__meta__")
    meta.size = 7
    data = meta.tobuf(tarfile.PAX_FORMAT) + b"skip me" + bytes(505) + buffer.getvalue()
    got = list(tar_members(io.BytesIO(data)))
    assert got == reference(data)
    assert [name for name, _ in got] == [f"k{i}.{ext}" for i in range(5) for ext in ("jpg", "txt")]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards(compress):
    data = archive(members(), tarfile.PAX_FORMAT)
    for stream in (io.BytesIO(compress(data)), io.BufferedReader(io.BytesIO(compress(data)))):
        assert list(tar_members(stream)) == members()


def test_large_sizes_in_base_256():
    header = bytearray(tarfile.TarInfo("big.bin").tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + (5).to_bytes(11, "big")  # 5 bytes, written as GNU base-256
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = bytes(header) + b"hello" + bytes(507) + bytes(1024)
    assert list(tar_members(io.BytesIO(data))) == [("big.bin", b"hello")]


def test_broken_streams_raise():
    data = archive(members(), tarfile.PAX_FORMAT)
    with pytest.raises(EOFError):
        list(tar_members(io.BytesIO(data[:5000])))
    with pytest.raises(EOFError):
        list(tar_members(io.BytesIO(data[:700])))
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_members(io.BytesIO(b"this is not a tar file" * 40)))
    damaged = bytearray(data)
    damaged[0] ^= 0xFF
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(damaged))))
    assert list(tar_members(io.BytesIO(b""))) == []
