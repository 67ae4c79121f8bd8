"""The tar reader on hand-made broken input: it ends on every input, refuses what it cannot
parse with TarFormatError (NotATarError for a file that is no tar), and passes over a member
too large to read without reading it."""
from __future__ import annotations

import gzip
import io
import signal
import tarfile
import tracemalloc

import pytest

from data_pipeline.io.tar_stream import NotATarError, TarFormatError, tar_members


@pytest.fixture()
def deadline():
    """Turns a hang into a failure: the reader must be done within 5 seconds."""
    def expired(signum, frame):
        raise TimeoutError("the tar reader did not finish within 5 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 5)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def member(name: str, data: bytes, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[156:157] = kind
    if size_field is not None:
        header[124:136] = size_field
    return with_checksum(header) + data + bytes(-len(data) % 512)


def pax(records: bytes) -> bytes:
    return member("PaxHeader", records, kind=b"x")


END = bytes(1024)
GOOD = member("a.jpg", b"A" * 700) + member("a.txt", b"first")


def read_all(data: bytes, **options) -> tuple[list[tuple[str, bytes]], list[str]]:
    skipped = []
    got = []
    try:
        for name, payload in tar_members(io.BytesIO(data), on_skip=lambda r, d: skipped.append(r), **options):
            got.append((name, payload))
    except (TarFormatError, EOFError) as error:
        got.append(("error", type(error).__name__.encode()))
    return got, skipped


def test_a_well_formed_pax_header_applies_to_the_next_member():
    data = GOOD + pax(b"19 path=b.longname\n") + member("ignored", b"x") + END
    assert read_all(data)[0][-1] == ("b.longname", b"x")


@pytest.mark.parametrize("records", [
    b"0 path=x\n",  # length 0: the old reader never moved on
    b"abc path=x\n",  # no digits
    b"99 path=x\n",  # length past the end
    b"12 pathx.jpg\n",  # no '='
    b"9" * 30 + b" path=x\n",  # a huge length
    b"3 \n",  # shorter than any record
    b"11 size=-5\n",  # a negative size
    b"31 size=" + b"9" * 22 + b"\n",  # a size past any bound
])
def test_bad_pax_records_are_a_format_error(deadline, records):
    got, _ = read_all(GOOD + pax(records) + member("b.jpg", b"B") + END)
    assert got == [("a.jpg", b"A" * 700), ("a.txt", b"first"), ("error", b"TarFormatError")]


@pytest.mark.parametrize("size_field", [
    b"\x80" + (1 << 80).to_bytes(11, "big"),  # base-256 2^80: OverflowError in the old reader
    b"\xff" * 12,  # base-256 negative
    b"\xc3" + bytes(11),  # neither base-256 marker
    b"-0000000017\0",  # a sign is no octal digit
    b"00000000x17\0",
])
def test_sizes_beyond_a_bound_or_malformed_are_a_format_error(deadline, size_field):
    got, _ = read_all(GOOD + member("b.jpg", b"B", size_field=size_field) + END)
    assert got[-1] == ("error", b"TarFormatError") and got[:2] == [("a.jpg", b"A" * 700), ("a.txt", b"first")]


def test_a_size_within_the_bound_that_the_stream_lacks_is_truncation(deadline):
    # 2^39 bytes claimed, a few present: refused by the cap, then skipped until the stream ends.
    got, skipped = read_all(GOOD + member("b.jpg", b"B", size_field=b"\x80" + (1 << 39).to_bytes(11, "big")) + END)
    assert got[-1] == ("error", b"EOFError") and skipped == ["member_too_large"]


def test_truncated_headers_data_and_garbage_end(deadline):
    data = GOOD + member("b.jpg", b"B" * 2000) + END
    assert len(GOOD) == 2560
    for cut in (600, 1536 + 100, 2560 + 100, 2560 + 512 + 1000):  # data, header, header, data
        got, _ = read_all(data[:cut])
        assert got[-1] == ("error", b"EOFError"), cut
    garbage = bytearray(data)
    garbage[2560:2560 + 512] = bytes(range(256)) * 2  # a header that is not one
    assert read_all(bytes(garbage))[0][-1] == ("error", b"TarFormatError")


def test_a_file_that_is_not_a_tar_is_recognised_on_its_first_header():
    for data in (b"PAR1" + bytes(3000), b'{"successes": 10, "count": 12}\n', b"x" * 511, gzip.compress(b"{}" * 600)):
        with pytest.raises(NotATarError):
            list(tar_members(io.BytesIO(data)))
    with pytest.raises(TarFormatError, match="damaged compressed"):
        list(tar_members(io.BytesIO(b"\x1f\x8b\x08\x00" + bytes(600))))


def test_a_member_of_unknown_type_costs_only_itself(deadline):
    data = GOOD + member("odd.bin", b"Z" * 600, kind=b"Q") + member("b.jpg", b"B") + END
    got, skipped = read_all(data)
    assert [name for name, _ in got] == ["a.jpg", "a.txt", "b.jpg"] and skipped == ["member_unknown_type"]


def test_a_member_over_the_cap_in_a_small_gzip_is_refused_without_reading_it(deadline):
    cap = 1 << 20
    big = bytes(cap + (64 << 10))  # zeros: the whole shard compresses to a few kilobytes
    data = gzip.compress(GOOD + member("big.jpg", big) + member("big.txt", b"after the big one") + END)
    assert len(data) < 10_000
    tracemalloc.start()
    try:
        got, skipped = read_all(data, max_member_bytes=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [name for name, _ in got] == ["a.jpg", "a.txt", "big.txt"]
    assert skipped == ["member_too_large"]
    # Reading the member would have needed more than the cap at once; skipping it streams.
    assert peak < cap // 2, peak
    # Under the cap, the same member is read whole.
    got, skipped = read_all(data, max_member_bytes=2 * cap)
    assert ("big.jpg", big) in got and skipped == []
