"""Checksum verification of an open volume: every mapped, written data block read back and
compared with the crc32c its extent map keeps (``fusenas fsck``). Reads only; repairs nothing.
"""

from __future__ import annotations

import crc32c

from fusenas.engine.core import Engine
from fusenas.units import BLOCK_SIZE


async def verify_checksums(vol: Engine) -> list[str]:
    """Read every mapped, written data block and compare its crc32c; one line per mismatch."""
    problems: list[str] = []
    for ino, node in sorted(vol.meta.inodes.items()):
        if node.extents is None:
            continue
        for m in vol.meta.map(ino, 0, node.extents.end_block()):
            if m.vol_block is None:
                continue
            data = await vol.blocks.read(m.vol_block, m.count)
            for i, crc in enumerate(m.crcs):
                if crc < 0:
                    continue
                block = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                if crc32c.crc32c(block) != crc:
                    problems.append(
                        f"inode {ino}: block {m.file_block + i} (volume block "
                        f"{m.vol_block + i}) does not match its checksum"
                    )
    return problems
