"""Key layout: memcmp order is the order the metadata needs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fusenas.meta import keys as K

u64 = st.integers(0, 2**64 - 1)


@given(a=u64, b=u64)
def test_integers_sort_numerically(a: int, b: int) -> None:
    assert (K.inode_key(a) < K.inode_key(b)) == (a < b)
    assert (K.dirindex_key(7, a) < K.dirindex_key(7, b)) == (a < b)
    assert (K.extent_key(a, 0) < K.extent_key(b, 0)) == (a < b)


@given(ino=u64, names=st.lists(st.binary(min_size=1, max_size=255), min_size=1, max_size=20))
def test_every_key_of_an_inode_lies_in_its_prefix_range(ino: int, names: list[bytes]) -> None:
    if ino == 2**64 - 1:
        return  # no key follows the last inode's prefix range
    for kind, make in (
        (K.Kind.DIRENT, lambda n: K.dirent_key(ino, n)),
        (K.Kind.XATTR, lambda n: K.xattr_key(ino, n)),
    ):
        p = K.prefix(kind, ino)
        end = K.prefix_end(p)
        for n in names:
            k = make(n)
            assert p <= k < end
        assert K.prefix(kind, ino + 1) >= end


def test_kinds_do_not_interleave_and_the_hash_is_stable() -> None:
    assert K.inode_key(2**64 - 1) < K.xattr_key(0, b"a") < K.dirent_key(0, b"a")
    assert K.name_hash(b"hello") == 0xA7B6EDA801E5347D
    assert K.split_u64(K.dirindex_key(5, 99), 9) == 99
