"""fusenas: a NAS filesystem mounted through FUSE over a journaled software RAID volume.

Read ``docs/architecture.md`` first. The layers, bottom up: ``volume`` (members, superblocks,
RAID layout, parity, the logical array), ``wal`` (the write-ahead log), ``stripe`` (the
write-back stripe cache that journals before it writes in place), ``meta`` (inodes,
directories, extents, the allocator, the lock shard table), ``fs`` (file data and the pyfuse3
adapter), wired together by ``mount``.
"""

__version__ = "0.1.0"
