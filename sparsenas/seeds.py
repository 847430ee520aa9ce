"""Seeds derived from named parts: every random stream of a study is keyed by what it is for and
by its place (study seed, candidate index, generation …), never by worker scheduling or by the
global generator's state."""

from __future__ import annotations

import hashlib
import json


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (ints, floats, strings), stable across
    processes and machines (unlike ``hash`` of strings)."""
    digest = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
