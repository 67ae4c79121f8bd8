"""What an offline Weights & Biases run wrote: its `run-ID.wandb` file read record by record, so
that a test can compare the history with metrics.jsonl without an account or a network.

The file is wandb's record log: a 7-byte header (":W&B", 0xBEE1, version 0), then blocks of
32 KiB holding records in LevelDB's log format (4-byte checksum, 2-byte little-endian length,
1-byte type: 1 full, 2 first, 3 middle, 4 last; a block's tail shorter than a record header is
zero padding); each record is a `wandb.proto.wandb_internal_pb2.Record`."""
from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER = b":W&B\xe1\xbe\x00"
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(HEADER), f"{path}: not a wandb record log"
    out, position, pending = [], len(HEADER), b""
    while position + 7 <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            break  # zeros: the end of what was written
        if kind in (FULL, FIRST):
            pending = payload
        elif kind in (MIDDLE, LAST):
            pending += payload
        if kind in (FULL, LAST) and len(payload) == length:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def offline_runs(directory: Path) -> list[tuple[str, list[dict]]]:
    """Every offline run under DIRECTORY/wandb, oldest first: (run id, its history rows)."""
    runs = []
    for folder in sorted((directory / "wandb").glob("offline-run-*")):
        [log] = folder.glob("run-*.wandb")
        run_id, history = None, []
        for record in records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
            elif kind == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
        runs.append((run_id, history))
    return runs
