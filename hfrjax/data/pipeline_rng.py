"""The per-image augmentation RNG of the input pipeline, made cheap.

Image t of the global order (any epoch, any process) is augmented with the generator
``np.random.default_rng([seed, 0x5EED, t])``, so batches depend only on (seed, position), not on
threads, worker processes or the process count. Building that generator costs more than the
augmentation itself (numpy's SeedSequence hashes the words in Python-level code, then PCG64 and
Generator objects are created per image). `augment_rng` returns a generator in exactly the same
state, computed with plain integer arithmetic and set on one reused generator per thread.

The arithmetic restates numpy's (``numpy/random/bit_generator.pyx``, ``_pcg64.pyx``):
SeedSequence mixes the entropy words into a pool of 4 uint32 with a multiply-xorshift hash
whose constants advance independently of the data; ``generate_state(4, uint64)`` hashes the
pool into 8 uint32 words read as 4 little-endian uint64; PCG64 seeds its 128-bit LCG with
``initstate = w0:w1`` and ``initseq = w2:w3`` (``pcg_setseq_128_srandom_r``). Tests check the
states against numpy's for many seeds and positions.
"""

from __future__ import annotations

import threading

import numpy as np

_M32 = 0xFFFFFFFF
_M128 = (1 << 128) - 1
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG's default 128-bit multiplier.
_POOL = 4  # SeedSequence's default pool size.
_TAG = 0x5EED  # Separates augmentation streams from other uses of the seed.


def _constants(init: int, mult: int, n: int) -> list[int]:
    out = [init]
    for _ in range(n):
        out.append(out[-1] * mult & _M32)
    return out


# The hash constant of each successive hashmix call: fixed, whatever the data.
_HASH_A = _constants(_INIT_A, _MULT_A, _POOL + _POOL * (_POOL - 1))
_HASH_B = _constants(_INIT_B, _MULT_B, 2 * _POOL)


def seed_sequence_state(words: tuple) -> list:
    """``np.random.SeedSequence(words).generate_state(4, np.uint64)`` for at most 4 entropy
    words in [0, 2**32): Python ints, or uint64 arrays to compute many sequences at once (the
    uint32 arithmetic is done modulo 2**64, then masked)."""
    if len(words) > _POOL:
        raise ValueError(f"at most {_POOL} words, got {len(words)}")
    pool = []
    for i in range(_POOL):
        v = ((words[i] if i < len(words) else 0) ^ _HASH_A[i]) * _HASH_A[i + 1] & _M32
        pool.append(v ^ (v >> 16))
    k = _POOL
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                v = (pool[src] ^ _HASH_A[k]) * _HASH_A[k + 1] & _M32
                k += 1
                r = (_MIX_L * pool[dst] - _MIX_R * (v ^ (v >> 16))) & _M32
                pool[dst] = r ^ (r >> 16)
    w = []
    for i in range(2 * _POOL):
        v = (pool[i % _POOL] ^ _HASH_B[i]) * _HASH_B[i + 1] & _M32
        w.append(v ^ (v >> 16))
    return [w[2 * i] | w[2 * i + 1] << 32 for i in range(_POOL)]


def pcg64_state(seed_state: list[int]) -> dict:
    """``np.random.PCG64`` state seeded from ``seed_state`` (4 uint64 from `seed_sequence_state`),
    as ``default_rng(words).bit_generator.state``."""
    s0, s1, i0, i1 = seed_state
    inc = (((i0 << 64) | i1) << 1 | 1) & _M128
    state = ((inc + ((s0 << 64) | s1)) * _PCG_MULT + inc) & _M128  # Two LCG steps from 0.
    return {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": 0,
        "uinteger": 0,
    }


_BLOCK = 512  # Positions whose seed states are computed together (vectorised).
_local = threading.local()


def _seed_state(seed: int, position: int) -> list[int]:
    """`seed_sequence_state` of (seed, tag, position), from this thread's cache of the current
    block of positions (images are read in nearly increasing positions)."""
    block, j = divmod(position, _BLOCK)
    cache = getattr(_local, "blocks", None)
    if cache is None:
        cache = _local.blocks = {}
    rows = cache.get((seed, block))
    if rows is None:
        t = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.uint64)
        states = seed_sequence_state((seed, _TAG, t))
        rows = np.stack(states, axis=1).tolist()
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        cache[(seed, block)] = rows
    return rows[j]


def augment_rng(seed: int, position: int) -> np.random.Generator:
    """The generator ``np.random.default_rng([seed, 0x5EED, position])``, in the same state.

    It is this thread's reused generator: use it before the next call in the same thread.
    Seeds or positions outside [0, 2**32) take numpy's own (slower) path.
    """
    if not (0 <= seed <= _M32 and 0 <= position <= _M32 - _BLOCK):
        return np.random.default_rng([seed, _TAG, position])
    gen = getattr(_local, "generator", None)
    if gen is None:
        gen = _local.generator = np.random.Generator(np.random.PCG64(0))
    gen.bit_generator.state = pcg64_state(_seed_state(seed, position))
    return gen
