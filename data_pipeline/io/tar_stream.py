"""The regular files of a tar stream, read in one forward pass that ends on every input.

Python's `tarfile` (under webdataset's `tar_file_iterator`) spends about half a
millisecond per sample parsing headers, mostly the pax headers that webdataset's and
img2dataset's writers put before every member: a tenth of the loader's whole per-sample
budget. Shards only need the name and the bytes of each regular file, which this reads
straight from the 512-byte headers: ustar and GNU names, pax `path` and `size` records,
GNU long names, base-256 sizes, and gzip, bzip2 or xz compressed streams.

Every byte comes from outside, so: each loop consumes input or stops; a size is checked
against the member cap before a byte of the member is read, and data is read in bounded
chunks, so memory follows the bytes that really arrive, never a size a header claims; a
member over the cap, of an unknown type or without a name is passed over and reported to
`on_skip`; a damaged header is a `TarFormatError` (`NotATarError` when the very first
header is not one), a stream that ends early an `EOFError`, and a failure of the
underlying stream (network, pipe, disk) a `ShardReadError`: the only kind worth a retry.
"""
from __future__ import annotations

import bz2
import gzip
import http.client
import lzma
import re
import zlib
from typing import BinaryIO, Callable, Iterator

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)  # the end of the archive
CHUNK = 1 << 20  # the most requested from the stream by one read of a member
SKIP_CHUNK = 64 << 10  # and by one read of bytes passed over
DEFAULT_MAX_MEMBER_BYTES = 512 << 20
# No writer in use makes a member this big; a size beyond it is a damaged header, not data to skip.
MAX_TAR_SIZE = 1 << 40
# pax and GNU long-name headers hold a few names and numbers.
MAX_EXTENDED_HEADER = 1 << 20
REGULAR = (b"0", b"\0", b"7")
EXTENDED = (b"x", b"L")  # pax header, GNU long name: apply to the next member
# links, devices, directories, FIFOs, global pax headers, GNU long link names
SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6", b"g", b"K")
WEBDATASET_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips these names; so does this
OCTAL = re.compile(rb"[0-7]*")

SkipReport = Callable[[str, str], None]  # (reason, detail)


class TarFormatError(ValueError):
    """The bytes are not a well-formed tar stream."""


class NotATarError(TarFormatError):
    """The first header is not a tar header: the file is something else."""


class ShardReadError(OSError):
    """Reading the underlying stream failed (network, pipe, disk): perhaps transient."""


class _Source:
    """The raw stream with its own failures marked as `ShardReadError`, and the first bytes
    (read to recognise a compressed stream) put back in front."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.head = b""
        while len(self.head) < 6:  # a pipe may answer in pieces
            more = self._raw_read(6 - len(self.head))
            if not more:
                break
            self.head += more

    def _raw_read(self, size: int) -> bytes:
        try:
            data = self.raw.read(size)
        except (OSError, http.client.HTTPException) as exn:
            raise ShardReadError(f"reading the shard failed: {type(exn).__name__}: {exn}") from exn
        return data or b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK  # decompressors call read(); answer in bounded pieces
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self._raw_read(size)


def _decompressed(source: _Source) -> BinaryIO:
    head = source.head
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(source)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source)
    return source


class _Reader:
    """Bounded reads of the (decompressed) tar bytes; a decompressor's complaint about its
    input is a `TarFormatError`, a stream that ends early an `EOFError`."""

    def __init__(self, raw: BinaryIO):
        self.stream = _decompressed(_Source(raw))

    def _read(self, size: int) -> bytes:
        try:
            return self.stream.read(size)
        except (ShardReadError, EOFError):
            raise
        except (OSError, zlib.error, lzma.LZMAError, ValueError) as exn:  # BadGzipFile is an OSError
            raise TarFormatError(f"damaged compressed stream ({type(exn).__name__}: {exn})") from None

    def read_up_to(self, size: int) -> bytes:
        """`size` bytes, or fewer only where the stream ends."""
        parts, got = [], 0
        while got < size:
            more = self._read(min(size - got, CHUNK))
            if not more:
                break
            parts.append(more)
            got += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_exactly(self, size: int, what: str) -> bytes:
        data = self.read_up_to(size)
        if len(data) < size:
            raise EOFError(f"tar stream ends inside {what} ({len(data)} of {size} bytes)")
        return data

    def skip(self, size: int, what: str) -> None:
        left = size
        while left > 0:
            more = self._read(min(left, SKIP_CHUNK))
            if not more:
                raise EOFError(f"tar stream ends inside {what} ({size - left} of {size} bytes)")
            left -= len(more)


def _number(field: bytes, what: str) -> int:
    """A numeric header field: octal digits, or GNU base-256 (a first byte 0x80, or 0xff
    for a negative number, which no size can be)."""
    if field[0] == 0x80:
        value = int.from_bytes(field[1:], "big")
    elif field[0] == 0xFF:
        raise TarFormatError(f"negative {what} in tar header")
    elif field[0] & 0x80:
        raise TarFormatError(f"bad base-256 {what} {field!r} in tar header")
    else:
        digits = field.split(b"\0", 1)[0].strip(b" ")
        if not OCTAL.fullmatch(digits):
            raise TarFormatError(f"bad {what} field {field!r} in tar header")
        value = int(digits, 8) if digits else 0
    return value


def _size(header: bytes, pax: dict | None) -> int:
    if pax is not None and "size" in pax:
        text = pax["size"]
        if not (text.isascii() and text.isdigit() and len(text) <= 20):
            raise TarFormatError(f"bad pax size record {text[:40]!r}")
        size = int(text)
    else:
        size = _number(header[124:136], "size")
    if size > MAX_TAR_SIZE:
        raise TarFormatError(f"member size {size} is beyond any shard's (damaged header)")
    return size


def _pax_records(data: bytes) -> dict[str, str]:
    """`LENGTH KEY=VALUE\\n` records; LENGTH counts the whole record, its own digits too."""
    records, pos = {}, 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not (digits.isdigit() and digits.isascii()):
            raise TarFormatError(f"bad pax record length at byte {pos}: {data[pos:pos + 20]!r}")
        length = int(digits)
        end = pos + length
        # The shortest record holds its length, a space, one character of key, '=' and '\n'.
        if length < len(digits) + 4 or end > len(data) or data[end - 1:end] != b"\n":
            raise TarFormatError(f"bad pax record of length {length} at byte {pos}")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals or not key:
            raise TarFormatError(f"pax record without 'key=' at byte {pos}")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _number(header[148:156], "checksum")
    except TarFormatError:
        return False
    if stored == sum(header[:148]) + 8 * 32 + sum(header[156:]):
        return True
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32  # old writers
    return stored == signed


def _name(header: bytes, long_name: str | None, pax: dict | None) -> str:
    if pax is not None and "path" in pax:
        return pax["path"]
    if long_name is not None:
        return long_name
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix holds the leading directories
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def ignore_skips(reason: str, detail: str) -> None:
    pass


def tar_members(stream: BinaryIO, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                on_skip: SkipReport = ignore_skips) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file, in stored order, webdataset's `__meta__` names
    left out. A member over `max_member_bytes` is skipped unread and reported to `on_skip`
    (`member_too_large`), as is one of an unknown type (`member_unknown_type`)."""
    reader = _Reader(stream)
    long_name = pax = None
    first = True
    while True:
        header = reader.read_up_to(BLOCK)
        if len(header) < BLOCK:
            if not header:
                return  # no end-of-archive blocks: tolerated, as tarfile does
            if first:
                raise NotATarError(f"{len(header)} bytes, shorter than one tar header: not a tar file")
            raise EOFError("tar stream ends inside a header")
        if header == ZERO_BLOCK:
            return
        if not _checksum_ok(header):
            if first:
                raise NotATarError("the first 512 bytes are not a tar header (no valid checksum): not a tar file")
            raise TarFormatError("tar header checksum mismatch (a damaged shard)")
        first = False
        kind = header[156:157]
        size = _size(header, pax)
        padded = size + (-size % BLOCK)
        if kind in EXTENDED:
            if size > MAX_EXTENDED_HEADER:
                raise TarFormatError(f"extended tar header of {size} bytes (damaged header)")
            data = reader.read_exactly(padded, "an extended header")[:size]
            if kind == b"x":
                pax = _pax_records(data)
            else:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in REGULAR:
            name = _name(header, long_name, pax)
            if size > max_member_bytes:
                on_skip("member_too_large", f"{name}: {size} bytes, over the cap of {max_member_bytes}")
                reader.skip(padded, name)
            else:
                data = reader.read_exactly(size, name)
                reader.skip(padded - size, name)
                if not WEBDATASET_META.match(name):
                    yield name, data
        elif kind in SKIPPED:
            reader.skip(padded, "a skipped member")
        else:
            on_skip("member_unknown_type", f"{_name(header, long_name, pax)}: tar type {kind!r}")
            reader.skip(padded, "a member of unknown type")
        long_name = pax = None
