"""Every shard read has a wall-clock bound (loader.shard_read_timeout_s): a pipe that sends
nothing, a pipe that sends a whole tar and then does not exit, a server that trickles a byte at
a time, a compressed member that inflates to gigabytes. Each ends at the bound, counted as
`shard_timeout` and skipped at once (not retried), with the samples read before it kept."""
from __future__ import annotations

import http.server
import io
import tarfile
import threading
import time
import zlib

from data_pipeline.io.shard_reader import read_shard
from data_pipeline.skips import Counters

BOUND_S = 1.5


def write_tar(path, keys) -> str:
    with tarfile.open(path, "w") as tar:
        for key in keys:
            for ext in ("jpg", "txt"):
                data = f"{key} {ext}".encode()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def read_all(url: str) -> tuple[list[str], dict, float]:
    counters = Counters()
    started = time.monotonic()
    keys = [sample["__key__"] for _, sample in read_shard(url, 0, counters, retries=2, retry_delay_s=0,
                                                          timeout_s=BOUND_S)]
    return keys, counters.as_dict(), time.monotonic() - started


def test_a_pipe_that_sends_nothing_ends_at_the_bound():
    keys, counts, took = read_all("pipe:sleep 100000")
    assert keys == [] and counts == {"shard_timeout": 1}
    assert BOUND_S <= took < BOUND_S + 3


def test_a_pipe_that_does_not_exit_after_its_tar_keeps_the_samples(tmp_path):
    shard = write_tar(tmp_path / "a.tar", ["k0", "k1", "k2"])
    keys, counts, took = read_all(f"pipe:cat {shard}; sleep 100000")
    assert keys == ["k0", "k1", "k2"] and counts == {"shard_timeout": 1}
    assert took < BOUND_S + 3


def test_a_server_that_trickles_ends_at_the_bound(tmp_path):
    body = open(write_tar(tmp_path / "t.tar", ["k0", "k1"]), "rb").read()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):  # a byte every 0.2 s: each read returns, the whole never comes
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        keys, counts, took = read_all(f"http://127.0.0.1:{server.server_port}/t.tar")
    finally:
        server.shutdown()
        server.server_close()
    assert keys == [] and counts == {"shard_timeout": 1}
    assert BOUND_S <= took < BOUND_S + 3


def test_a_compression_bomb_ends_at_the_bound(tmp_path):
    # A gzip'd tar whose one member holds 1 GiB of zeros (1 MB compressed): skipped as too large,
    # it still has to be inflated to reach the next header; the bound ends that.
    size = 2**30
    info = tarfile.TarInfo("k0.jpg")
    info.size = size
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    chunk = bytes(2**20)
    with open(tmp_path / "bomb.tar.gz", "wb") as out:
        out.write(compressor.compress(info.tobuf()))
        for _ in range(size // len(chunk)):
            out.write(compressor.compress(chunk))
        out.write(compressor.flush())
    assert (tmp_path / "bomb.tar.gz").stat().st_size < 8 * 2**20
    started = time.monotonic()
    counters = Counters()
    keys = [s["__key__"] for _, s in read_shard(str(tmp_path / "bomb.tar.gz"), 0, counters, retries=2,
                                                  retry_delay_s=0, max_member_bytes=2**20, timeout_s=0.3)]
    took = time.monotonic() - started
    assert keys == [] and counters.as_dict()["shard_timeout"] == 1
    assert took < 0.3 + 1.0
