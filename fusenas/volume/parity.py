"""Pure parity arithmetic for RAID5 (P) and RAID6 (P+Q), as Linux md computes it.

No I/O, no state. Every block passed in is a bytes-like object (``ByteData``) and all blocks
of one call have the same length in **bytes**; results are new ``bytes`` of that length.

Arithmetic is in GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d) and generator g = 2,
exactly as md/raid6 (H. Peter Anvin, "The mathematics of RAID-6"), so parity written here
matches what an md array of the same layout holds:

* ``P = D_0 ^ D_1 ^ ... ^ D_{n-1}``
* ``Q = g^0·D_0 ^ g^1·D_1 ^ ... ^ g^{n-1}·D_{n-1}``, ``i`` being the *data index* in the
  stripe (not the member index), so at most 255 data blocks.

Recovery (``recover``): one missing data block from P, or from Q when P is missing too; two
missing data blocks from P and Q together. Anything more raises ``DataLostError``.

Speed: no Python loop ever runs over bytes. Blocks whose length is a multiple of 8 are viewed
as uint64 words and Q is computed by Horner's rule with md's word-parallel multiply-by-2
(shift, then xor 0x1d into the bytes whose high bit was set); multiplying by a general
constant is one ``np.take`` through a 256-entry row of the multiplication table. Other lengths
are zero-padded to a multiple of 8 (a copy; correct, just slower — real callers use 4 KiB
multiples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fusenas.errors import DataLostError
from fusenas.units import ByteData

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]

POLY = 0x11D
MAX_DATA_BLOCKS = 255  # g has order 255: beyond that two data indexes share a coefficient


def _build_tables() -> tuple[U8, U8, U8]:
    exp = np.zeros(512, dtype=np.uint8)  # doubled so exp[log a + log b] needs no modulo
    log = np.zeros(256, dtype=np.uint8)
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= POLY
    exp[255:510] = exp[0:255]
    # MUL[a, b] = a·b. 64 KiB; a row MUL[c] turns multiply-by-c into one np.take.
    la = log.astype(np.intp)
    mul = exp[la[:, None] + la[None, :]]
    mul[0, :] = 0
    mul[:, 0] = 0
    return exp, log, mul


EXP, LOG, MUL = _build_tables()
EXP.flags.writeable = False
LOG.flags.writeable = False
MUL.flags.writeable = False


def gf_mul(a: int, b: int) -> int:
    """a·b in GF(2^8)."""
    return int(MUL[a, b])


def gf_pow2(i: int) -> int:
    """g^i for g = 2; ``i`` may be negative."""
    return int(EXP[i % 255])


def gf_inv(a: int) -> int:
    """a^-1 in GF(2^8); ``a`` must not be 0."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return int(EXP[(255 - int(LOG[a])) % 255])


# -- word-parallel helpers -------------------------------------------------------------------

_HIGH = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0xFEFEFEFEFEFEFEFE)  # after the shift, the bits that stay in their byte
_SEVEN = np.uint64(7)
_ONE = np.uint64(1)
_REDUCE = np.uint64(0x1D)


def _mul2_inplace(q: U64, tmp: U64) -> None:
    """q ← 2·q bytewise, md's NBYTES/SHLBYTE/MASK trick on 64-bit words."""
    np.bitwise_and(q, _HIGH, out=tmp)
    np.right_shift(tmp, _SEVEN, out=tmp)
    # Each byte of tmp is now 0 or 1, so multiplying by 0x1d cannot carry into the next byte.
    np.multiply(tmp, _REDUCE, out=tmp)
    np.left_shift(q, _ONE, out=q)
    np.bitwise_and(q, _LOW7, out=q)
    np.bitwise_xor(q, tmp, out=q)


def _as_u8(block: ByteData) -> U8:
    # cast("B") accepts memoryviews of any format; np.frombuffer then never copies.
    return np.frombuffer(memoryview(block).cast("B"), dtype=np.uint8)


def _block_len(blocks: Sequence[ByteData | None]) -> int:
    lengths = {memoryview(b).nbytes for b in blocks if b is not None}
    if len(lengths) != 1:
        if not lengths:
            raise ValueError("no blocks given")
        raise ValueError(f"blocks differ in length: {sorted(lengths)}")
    return lengths.pop()


def _words(block: ByteData, padded: int) -> U64:
    """A uint64 view of ``block`` (zero-padded copy when its length is not a multiple of 8)."""
    b = _as_u8(block)
    if b.size != padded:
        buf = np.zeros(padded, dtype=np.uint8)
        buf[: b.size] = b
        b = buf
    return b.view(np.uint64)


def _padded(length: int) -> int:
    return (length + 7) & ~7


def _to_bytes(words: U64, length: int) -> bytes:
    return words.view(np.uint8)[:length].tobytes()


def _xor_into(acc: U64, blocks: Sequence[ByteData], padded: int) -> None:
    for d in blocks:
        np.bitwise_xor(acc, _words(d, padded), out=acc)


def _syndrome(data: Sequence[ByteData | None], padded: int, want_q: bool) -> tuple[U64, U64 | None]:
    """P and Q of ``data``, a missing (None) block counting as zeros."""
    words = padded // 8
    p = np.zeros(words, dtype=np.uint64)
    if not want_q:
        _xor_into(p, [d for d in data if d is not None], padded)
        return p, None
    q = np.zeros(words, dtype=np.uint64)
    tmp = np.empty(words, dtype=np.uint64)
    # Horner from the highest index down: q = (((D_{n-1})·2 ^ D_{n-2})·2 ^ ...)·2 ^ D_0.
    started = False  # while q is still all zero, doubling it is wasted work
    for i in range(len(data) - 1, -1, -1):
        if started:
            _mul2_inplace(q, tmp)
        d = data[i]
        if d is not None:
            w = _words(d, padded)
            np.bitwise_xor(q, w, out=q)
            np.bitwise_xor(p, w, out=p)
            started = True
    return p, q


def _mul_const(c: int, block: U8) -> U8:
    return np.take(MUL[c], block)


def _check_count(n: int) -> None:
    if n > MAX_DATA_BLOCKS:
        raise ValueError(f"RAID6 supports at most {MAX_DATA_BLOCKS} data blocks, got {n}")


# -- public API -------------------------------------------------------------------------------


def gen_p(data: Sequence[ByteData]) -> bytes:
    """P = XOR of the data blocks."""
    length = _block_len(data)
    padded = _padded(length)
    p, _ = _syndrome(data, padded, want_q=False)
    return _to_bytes(p, length)


def gen_pq(data: Sequence[ByteData]) -> tuple[bytes, bytes]:
    """(P, Q) of the data blocks, Q weighted by g^data_index."""
    _check_count(len(data))
    length = _block_len(data)
    p, q = _syndrome(data, _padded(length), want_q=True)
    assert q is not None
    return _to_bytes(p, length), _to_bytes(q, length)


def gen_rows(rows: U8, *, want_q: bool) -> tuple[U8, U8 | None]:
    """P (and Q if ``want_q``) of many stripes at once.

    ``rows`` is a C-contiguous uint8 array of shape (stripes, data blocks, length), ``length``
    a multiple of 8; the results have shape (stripes, length). One numpy pass per data index
    over all stripes, no Python loop per stripe; numpy releases the GIL while it runs, so
    callers may run this in a worker thread.
    """
    _, ndata, length = rows.shape
    if length % 8:
        raise ValueError(f"row length {length} is not a multiple of 8")
    words = rows.view(np.uint64)
    p = np.bitwise_xor.reduce(words, axis=1)
    if not want_q:
        return p.view(np.uint8), None
    _check_count(ndata)
    q = words[:, ndata - 1].copy()
    tmp = np.empty_like(q)
    for i in range(ndata - 2, -1, -1):  # Horner, as in _syndrome
        _mul2_inplace(q, tmp)
        np.bitwise_xor(q, words[:, i], out=q)
    return p.view(np.uint8), q.view(np.uint8)


def update_p(old_p: ByteData, old_d: ByteData, new_d: ByteData) -> bytes:
    """P after one data block changes from ``old_d`` to ``new_d`` (read-modify-write)."""
    length = _block_len([old_p, old_d, new_d])
    padded = _padded(length)
    p = _words(old_p, padded).copy()
    _xor_into(p, [old_d, new_d], padded)
    return _to_bytes(p, length)


def update_pq(
    old_p: ByteData, old_q: ByteData, index: int, old_d: ByteData, new_d: ByteData
) -> tuple[bytes, bytes]:
    """(P, Q) after data block ``index`` changes from ``old_d`` to ``new_d``."""
    if not 0 <= index < MAX_DATA_BLOCKS:
        raise ValueError(f"data index {index} outside 0..{MAX_DATA_BLOCKS - 1}")
    length = _block_len([old_p, old_q, old_d, new_d])
    padded = _padded(length)
    delta = _words(old_d, padded) ^ _words(new_d, padded)
    p = delta ^ _words(old_p, padded)
    q_delta = _mul_const(gf_pow2(index), delta.view(np.uint8)).view(np.uint64)
    q = q_delta ^ _words(old_q, padded)
    return _to_bytes(p, length), _to_bytes(q, length)


def recover(
    data: list[ByteData | None], p: ByteData | None, q: ByteData | None = None
) -> list[bytes]:
    """The full data list, each ``None`` entry rebuilt from the others and P and/or Q.

    ``p``/``q`` are None when missing (or, for ``q``, when the level has none). Recoverable:
    one missing data block with P or Q present; two with both present. Raises
    :class:`DataLostError` otherwise. Present blocks are returned as ``bytes`` copies.
    """
    missing = [i for i, d in enumerate(data) if d is None]
    length = _block_len([*data, p, q])
    if not missing:
        return [bytes(d) for d in data if d is not None]
    padded = _padded(length)
    out: list[bytes | None] = [None if d is None else bytes(d) for d in data]

    if len(missing) == 1 and p is not None:
        # RAID5 path: D_x = P ^ (XOR of the others). Q is not needed.
        (x,) = missing
        acc = _words(p, padded).copy()
        _xor_into(acc, [d for d in data if d is not None], padded)
        out[x] = _to_bytes(acc, length)
    elif len(missing) == 1 and q is not None:
        # Data + P lost: Q ^ Q' = g^x·D_x, where Q' is Q with D_x taken as zero.
        (x,) = missing
        _check_count(len(data))
        _, q_partial = _syndrome(data, padded, want_q=True)
        assert q_partial is not None
        qx = (q_partial ^ _words(q, padded)).view(np.uint8)
        out[x] = _mul_const(gf_inv(gf_pow2(x)), qx)[:length].tobytes()
    elif len(missing) == 2 and p is not None and q is not None:
        # Anvin §4: with Pxy = P^P', Qxy = Q^Q' (P', Q' computed with D_x = D_y = 0),
        #   D_x = A·Pxy ^ B·Qxy,  D_y = Pxy ^ D_x,
        #   A = g^(y-x) · (g^(y-x) ^ 1)^-1,  B = g^(-x) · (g^(y-x) ^ 1)^-1.
        x, y = missing
        _check_count(len(data))
        p_partial, q_partial = _syndrome(data, padded, want_q=True)
        assert q_partial is not None
        pxy = (p_partial ^ _words(p, padded)).view(np.uint8)
        qxy = (q_partial ^ _words(q, padded)).view(np.uint8)
        inv = gf_inv(gf_pow2(y - x) ^ 1)
        a = gf_mul(gf_pow2(y - x), inv)
        b = gf_mul(gf_pow2(-x), inv)
        dx = _mul_const(a, pxy) ^ _mul_const(b, qxy)
        dy = pxy ^ dx
        out[x] = dx[:length].tobytes()
        out[y] = dy[:length].tobytes()
    else:
        have = " and ".join(n for n, b in (("P", p), ("Q", q)) if b is not None) or "no parity"
        raise DataLostError(
            f"stripe lost: data blocks {', '.join(f'D{i}' for i in missing)} missing "
            f"and only {have} left to rebuild them from"
        )
    return [b for b in out if b is not None]
