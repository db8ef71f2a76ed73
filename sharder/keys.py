"""Salted identifiers. Every id that leaves the sharder (sample key, group, source) is a keyed
BLAKE2b digest: stable for the same inputs and salt, unlinkable to a name or path without it."""
from __future__ import annotations

import hashlib


def salted_hex(salt: str, *parts: object, n: int = 16) -> str:
    """``n`` lowercase hex chars of BLAKE2b(parts) keyed with ``salt``."""
    h = hashlib.blake2b(key=salt.encode()[:64], digest_size=max(8, (n + 1) // 2))
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")  # separator so ("ab","c") != ("a","bc")
    return h.hexdigest()[:n]


def order_key(seed: int, key: str) -> bytes:
    """Position of a sample in the global shuffle: a seeded hash of its key, so the order is
    deterministic, independent of worker count, and mixes datasets across shards."""
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()


def unit_interval(seed: int, *parts: object) -> float:
    """Deterministic float in [0, 1) from ``parts`` (used for group -> split assignment)."""
    d = hashlib.blake2b(f"{seed}:".encode() + "\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(d.digest(), "big") / 2**64
