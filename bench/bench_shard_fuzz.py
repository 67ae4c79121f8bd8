"""Fuzzes the shard reader: mutated shards must end, and be counted, never hang or raise.

    python bench/bench_shard_fuzz.py [--mutations 10000] [--seed 0] [--timeout-s 5]
    python bench/bench_shard_fuzz.py --mutations 0 --time-faults 10 --read-bound-s 1

Not a test: it prints figures. A few valid shards are built in memory (this project's
layout through `schema.sample_dict` and an img2dataset-style one; plain GNU, pax-header and
gzip variants), then mutated: bit flips, byte overwrites, truncation, insertion and
deletion of byte runs, and edits of header fields (size, checksum, typeflag) and of pax
records, the edited header's checksum recomputed half the time so that the edit gets past
the checksum test. Gzip shards are mutated both in their compressed bytes and inside (the
tar mutated, then recompressed). Each mutant is written to a file and read as the loader
reads a shard (`read_shard`: one retry, no delay, a 64 KiB member cap), in this process,
under a SIGALRM watchdog that counts a read still running after --timeout-s as a hang. Any
exception out of `read_shard` is counted as uncaught. Both must stay 0.

Then the faults of time (--time-faults rounds of each): a `pipe:` command that sends nothing, one
that sends a whole shard and does not exit, one that sends random bytes and does not exit, an
HTTP server on loopback that trickles a byte every 0.2 s, and a gzip'd shard whose one member
inflates to 4 GiB. Each is read with `read_shard(timeout_s=--read-bound-s)`; a read still
running at the bound plus 3 s counts as a hang beyond the bound. Printed per fault: reads, the
longest, those that ended counted as `shard_timeout`, samples kept, hangs; hangs must stay 0.
"""
from __future__ import annotations

import argparse
import gzip
import http.server
import io
import json
import logging
import random
import signal
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline import schema  # noqa: E402
from data_pipeline.io.shard_reader import read_shard  # noqa: E402
from data_pipeline.skips import Counters  # noqa: E402

MEMBER_CAP = 64 << 10


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


# Valid shards --------------------------------------------------------------------------

def project_samples(rng: random.Random, count: int) -> list[dict]:
    samples = []
    for i in range(count):
        width, height = rng.randint(32, 640), rng.randint(32, 480)
        regions = [schema.region_entry([1, 2, width // 2, height // 2], [f"a thing {i}"], None)] if i % 2 else []
        info = schema.image_info("fuzz", width, height, [f"caption number {i}", "another ünïcode one"], regions,
                                 {"image_id": i})
        samples.append(schema.sample_dict(f"fuzz_{i}", "jpg", rng.randbytes(rng.randint(0, 3000)), info))
    return samples


def img2dataset_samples(rng: random.Random, count: int) -> list[dict]:
    samples = []
    for i in range(count):
        key = f"{i:09d}"
        meta = {"url": f"https://example.com/{i}.jpg", "key": key, "status": "success", "error_message": None,
                "width": 256, "height": 256, "original_width": 1024, "original_height": 768, "exif": "{}",
                "sha256": "0" * 64}
        samples.append({"__key__": key, "jpg": rng.randbytes(rng.randint(100, 2500)), "txt": f"photo {i}".encode(),
                        "json": json.dumps(meta).encode()})
    # one member past the cap, which the reader must pass over without reading it
    samples[-1]["jpg"] = rng.randbytes(MEMBER_CAP + 1000)
    return samples


def tar_bytes(samples: list[dict], fmt: int, pax: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for sample in samples:
            for extension, data in sample.items():
                if extension.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                info.size = len(data)
                # A float time and a non-ASCII owner make pax records, as webdataset's writer does.
                info.mtime = 1700000000.25 if pax else 1700000000
                info.uname = "wrîter" if pax else "writer"
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def valid_shards(rng: random.Random) -> dict[str, bytes]:
    project, img2 = project_samples(rng, 6), img2dataset_samples(rng, 5)
    shards = {
        "project-gnu": tar_bytes(project, tarfile.GNU_FORMAT, False),
        "project-pax": tar_bytes(project, tarfile.PAX_FORMAT, True),
        "img2dataset-pax": tar_bytes(img2, tarfile.PAX_FORMAT, True),
        "img2dataset-gnu": tar_bytes(img2, tarfile.GNU_FORMAT, False),
    }
    shards["project-pax.gz"] = gzip.compress(shards["project-pax"], mtime=0)
    shards["img2dataset-pax.gz"] = gzip.compress(shards["img2dataset-pax"], mtime=0)
    return shards


def header_offsets(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, typeflag) of every 512-byte header, pax and GNU long-name headers included."""
    offsets, pos = [], 0
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header == bytes(512):
            break
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            break
        offsets.append((pos, header[156:157]))
        pos += 512 + size + (-size % 512)
    return offsets


# Mutations -----------------------------------------------------------------------------

def fix_checksum(data: bytearray, offset: int) -> None:
    header = data[offset:offset + 512]
    header[148:156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(header)


def bit_flips(rng, data):
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    return data


def byte_overwrite(rng, data):
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data))
        data[pos:pos + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    return data


def truncate(rng, data):
    return data[:rng.randrange(len(data))]


def insert(rng, data):
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + rng.choice([rng.randbytes(rng.randint(1, 700)), bytes(rng.randint(1, 1024))]) + data[pos:]


def delete(rng, data):
    pos = rng.randrange(len(data))
    return data[:pos] + data[pos + rng.randint(1, 700):]


SIZE_VALUES = [
    lambda rng: b"\x80" + (1 << 80).to_bytes(11, "big"),  # base-256, 2^80
    lambda rng: b"\xff" * 12,  # base-256, negative
    lambda rng: b"\x80" + rng.randbytes(11),
    lambda rng: b"%011o\0" % rng.randrange(1 << 33),
    lambda rng: b"%011o\0" % rng.randrange(4096),
    lambda rng: b"-0000000017\0",
    lambda rng: b"7777777777777"[:12],  # 12 octal digits, no NUL
    lambda rng: b"12ab\0       ",
    lambda rng: rng.randbytes(12),
]


def header_edit(rng, data):
    headers = header_offsets(bytes(data))
    if not headers:
        return bit_flips(rng, data)
    offset, _ = rng.choice(headers)
    field = rng.choice(["size", "checksum", "typeflag", "name", "magic"])
    if field == "size":
        data[offset + 124:offset + 136] = rng.choice(SIZE_VALUES)(rng)
    elif field == "checksum":
        data[offset + 148:offset + 156] = rng.choice([rng.randbytes(8), b"%07o\0" % rng.randrange(1 << 21),
                                                      b"       \0"])
        return data  # the edit is the checksum itself
    elif field == "typeflag":
        data[offset + 156] = rng.choice(b"0123456789xgLKSVAZ\0\xff")
    elif field == "name":
        data[offset:offset + 100] = rng.choice([b"noextension", b".hidden", b"a/b/", b"x.JPG", b"__meta__",
                                                 rng.randbytes(100)]).ljust(100, b"\0")[:100]
    else:
        data[offset + 257:offset + 265] = rng.randbytes(8)
    if rng.random() < 0.5:
        fix_checksum(data, offset)
    return data


PAX_RECORDS = [
    b"0 path=x\n",  # length 0: the record that made the old reader loop forever
    b"abc path=x\n",  # non-digits
    b"999999 path=x\n",  # length past the end
    b"11 pathx.jpg\n",  # no '='
    b"9" * 40 + b" path=x\n",  # huge length
    b"12 size=-5\n",
    b"25 size=999999999999999\n",
    b"33 size=" + b"9" * 24 + b"\n",
    b"3 \n",
    b"17 path=a.b.c.d\n",
    b"",
]


def pax_edit(rng, data):
    pax = [o for o, kind in header_offsets(bytes(data)) if kind == b"x"]
    if not pax:
        return header_edit(rng, data)
    offset = rng.choice(pax)
    header = data[offset:offset + 512]
    size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    body = bytes(data[offset + 512:offset + 512 + size])
    records = rng.choice(PAX_RECORDS)
    body = rng.choice([records, records + body, body + records, body[:rng.randrange(len(body) + 1)]])
    if rng.random() < 0.8:  # keep the header's size in step with the new records
        data[offset + 124:offset + 136] = b"%011o\0" % len(body)
        fix_checksum(data, offset)
    padded = body + bytes(-len(body) % 512)
    end = offset + 512 + size + (-size % 512)
    return data[:offset + 512] + padded + data[end:]


MUTATIONS = {"bit_flip": bit_flips, "byte_overwrite": byte_overwrite, "truncate": truncate, "insert": insert,
             "delete": delete, "header_field": header_edit, "pax_record": pax_edit}


BYTE_MUTATIONS = ["bit_flip", "byte_overwrite", "truncate", "insert", "delete"]


def mutate(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    if name.endswith(".gz"):
        if rng.random() < 0.5:  # inside the compressed stream
            kind = rng.choice(list(MUTATIONS))
            inner = bytearray(gzip.decompress(data))
            return f"{kind} (in gzip)", gzip.compress(bytes(MUTATIONS[kind](rng, inner)), mtime=0)
        kind = rng.choice(BYTE_MUTATIONS)  # the compressed bytes have no tar headers to edit
        return f"{kind} (of gzip)", bytes(MUTATIONS[kind](rng, bytearray(data)))
    kind = rng.choice(list(MUTATIONS))
    return kind, bytes(MUTATIONS[kind](rng, bytearray(data)))


# Reading -------------------------------------------------------------------------------

def read(path: str, timeout_s: float) -> tuple[int, Counters, str | None]:
    """(samples yielded, counters, outcome: None, 'hang' or the uncaught exception)."""
    counters = Counters()
    samples = 0
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        for _index, _sample in read_shard(path, 0, counters, retries=1, retry_delay_s=0.0,
                                          max_member_bytes=MEMBER_CAP):
            samples += 1
        outcome = None
    except Hang:
        outcome = "hang"
    except Exception:  # noqa: BLE001 - what the fuzzer is looking for
        outcome = traceback.format_exc(limit=-3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return samples, counters, outcome


# Faults of time ----------------------------------------------------------------------------

class _Trickle(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for i in range(len(self.body)):
                self.wfile.write(self.body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the reader gave up

    def log_message(self, *args):
        pass


def bomb(path: Path, size: int = 4 << 30) -> None:
    """A gzip'd tar whose one member holds SIZE zero bytes (about SIZE / 1000 compressed)."""
    info = tarfile.TarInfo("k0.jpg")
    info.size = size
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with open(path, "wb") as out:
        out.write(compressor.compress(info.tobuf()))
        for _ in range(size // len(chunk)):
            out.write(compressor.compress(chunk))
        out.write(compressor.flush())


def time_faults(rounds: int, bound_s: float, shard: bytes, tmp: Path) -> bool:
    """Reads each fault ROUNDS times; prints the table; True when none ran past the bound."""
    (tmp / "whole.tar").write_bytes(shard)
    bomb(tmp / "bomb.tar.gz")
    _Trickle.body = shard
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    faults = {"pipe sends nothing": "pipe:sleep 1000",
              "pipe sends a tar, no exit": f"pipe:cat {tmp / 'whole.tar'}; sleep 1000",
              "pipe sends junk, no exit": "pipe:head -c 20000 /dev/urandom; sleep 1000",
              "http trickles": f"http://127.0.0.1:{server.server_port}/whole.tar",
              "gzip bomb (4 GiB member)": str(tmp / "bomb.tar.gz")}
    columns = ["reads", "longest s", "shard_timeout", "samples kept", "hangs"]
    print(f"{'time fault (bound ' + format(bound_s, 'g') + ' s)':32s}" + "".join(f"{c:>14s}" for c in columns))
    clean = True
    for name, url in faults.items():
        longest, timed_out, kept, hangs = 0.0, 0, 0, 0
        for _ in range(rounds):
            counters = Counters()
            started = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, bound_s + 3.0)
            try:
                kept += sum(1 for _ in read_shard(url, 0, counters, retries=1, retry_delay_s=0.0,
                                                  max_member_bytes=MEMBER_CAP, timeout_s=bound_s))
            except Hang:
                hangs += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            longest = max(longest, time.perf_counter() - started)
            timed_out += counters.counts.get("shard_timeout", 0)
        clean &= hangs == 0
        print(f"{name:32s}{rounds:14d}{longest:14.2f}{timed_out:14d}{kept:14d}{hangs:14d}")
    server.shutdown()
    server.server_close()
    return clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=5.0, help="per mutant; a read still running is a hang")
    parser.add_argument("--time-faults", type=int, default=4, metavar="ROUNDS",
                        help="rounds of each fault of time (stalled pipes, trickling HTTP, a compression bomb); 0: none")
    parser.add_argument("--read-bound-s", type=float, default=1.0,
                        help="read_shard's timeout_s for the faults of time (loader.shard_read_timeout_s)")
    args = parser.parse_args()
    logging.getLogger("data_pipeline").setLevel(logging.ERROR)  # every mutant's skip notice would drown the table
    rng = random.Random(args.seed)
    shards = valid_shards(random.Random(f"shards/{args.seed}"))
    signal.signal(signal.SIGALRM, _alarm)
    rows: dict[str, Counter] = {}
    reasons: Counter = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        path = str(Path(tmp) / "mutant.tar")
        for name, data in shards.items():  # the unmutated shards first: every sample must arrive
            Path(path).write_bytes(data)
            samples, counters, outcome = read(path, args.timeout_s)
            expected = 6 if name.startswith("project") else 5
            status = "ok" if samples == expected and outcome is None else f"WRONG ({samples} samples, {outcome})"
            print(f"valid {name:20s} {len(data):6d} bytes: {samples} samples, skips {counters.as_dict()}  {status}")
        print()
        names = list(shards)
        for number in range(args.mutations):
            name = names[number % len(names)]
            kind, mutant = mutate(rng, name, shards[name])
            Path(path).write_bytes(mutant)
            samples, counters, outcome = read(path, args.timeout_s)
            row = rows.setdefault(kind, Counter())
            row["mutants"] += 1
            row["with samples"] += samples > 0
            row["samples"] += samples
            row["counted bad"] += bool(counters.counts)
            if outcome == "hang":
                row["hangs"] += 1
                failures.append(f"hang: mutation {number} ({kind} of {name})")
            elif outcome is not None:
                row["uncaught"] += 1
                failures.append(f"uncaught: mutation {number} ({kind} of {name}):\n{outcome}")
            reasons.update(counters.counts)
    elapsed = time.perf_counter() - started
    columns = ["mutants", "with samples", "samples", "counted bad", "hangs", "uncaught"]
    print(f"{'mutation':28s}" + "".join(f"{c:>14s}" for c in columns))
    total = Counter()
    for kind in sorted(rows):
        total.update(rows[kind])
        print(f"{kind:28s}" + "".join(f"{rows[kind][c]:14d}" for c in columns))
    print(f"{'all':28s}" + "".join(f"{total[c]:14d}" for c in columns))
    print()
    print("counted by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    print(f"{args.mutations} mutants in {elapsed:.1f} s ({1000 * elapsed / max(1, args.mutations):.2f} ms each), "
          f"seed {args.seed}, member cap {MEMBER_CAP} bytes")
    for failure in failures[:10]:
        print(failure)
    clean = True
    if args.time_faults:
        print()
        with tempfile.TemporaryDirectory() as tmp:
            clean = time_faults(args.time_faults, args.read_bound_s, next(iter(shards.values())), Path(tmp))
    if total["hangs"] or total["uncaught"] or not clean:
        sys.exit(1)


if __name__ == "__main__":
    main()
