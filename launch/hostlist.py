"""Expansion of Slurm's compressed host lists, as `scontrol show hostnames` does it:
`node[01-03,07]` -> node01 node02 node03 node07; `r[1-2]-n[1-2]` -> r1-n1 r1-n2 r2-n1 r2-n2."""
from __future__ import annotations

import itertools
import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top_level(text: str) -> list[str]:
    """Splits at commas outside brackets."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {text!r}")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced '[' in host list {text!r}")
    items.append("".join(current))
    return [item for item in items if item]


def _expand_bracket(body: str, text: str) -> list[str]:
    values = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"bad range {part!r} in host list {text!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"descending range {part!r} in host list {text!r}")
        width = len(low)  # Slurm keeps the zero padding of the lower bound
        values += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return values


def expand_hostlist(text: str) -> list[str]:
    hosts = []
    for item in _split_top_level(text.strip()):
        pieces = re.split(r"\[([^\]]*)\]", item)
        if len(pieces) > 1 and pieces[-1]:
            raise ValueError(f"text after the last ']' in host list {text!r} (Slurm rejects it too)")
        # pieces alternate: literal, bracket body, literal, ...
        choices = [[pieces[i]] if i % 2 == 0 else _expand_bracket(pieces[i], text) for i in range(len(pieces))]
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts
