"""Silent corruption for the checksum tests: flip a bit of a data block on a member file."""

from __future__ import annotations

from pathlib import Path

from fusenas.units import BLOCK_SIZE
from fusenas.volume.superblock import DATA_OFFSET


def rot_one_block(member: Path, data: bytes) -> int:
    """Flip one bit in the first block of ``data`` (4 KiB aligned, all blocks distinct) found
    on the member file ``member``, through the file (so a daemon sees it, as a disk's rot);
    return its offset in the member."""
    blocks = {data[off : off + BLOCK_SIZE] for off in range(0, len(data), BLOCK_SIZE)}
    with open(member, "r+b") as f:
        f.seek(DATA_OFFSET)
        area = f.read()
        found = (
            off for off in range(0, len(area), BLOCK_SIZE) if area[off : off + BLOCK_SIZE] in blocks
        )
        pos = DATA_OFFSET + next(found)
        f.seek(pos + 7)
        f.write(bytes([area[pos - DATA_OFFSET + 7] ^ 0x01]))
    return pos
