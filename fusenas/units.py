"""Units that are easy to mix up, as distinct types, and the sizes every layer agrees on.

All offsets and lengths in fusenas are in **bytes** unless a name says otherwise
(``..._block`` counts ``BLOCK_SIZE`` blocks). ``NewType`` keeps mypy from letting a member
offset pass for a logical one.
"""

from typing import NewType

#: The unit of checksums, allocation, journaling and parity updates (md's page). Bytes.
BLOCK_SIZE = 4096

#: A byte offset in the logical volume (the address space the array presents).
LogicalOffset = NewType("LogicalOffset", int)
#: A byte offset inside one member device (superblock area included).
MemberOffset = NewType("MemberOffset", int)
#: The index of a member in the array, 0-based, as recorded in its superblock.
MemberIndex = NewType("MemberIndex", int)
#: A stripe (row) number: stripe s covers member byte range [s*chunk, (s+1)*chunk) of the
#: data area of every member.
StripeNumber = NewType("StripeNumber", int)
#: A log sequence number: strictly increasing by one per WAL record, never reused.
LSN = NewType("LSN", int)
#: An inode number; 1 is the root directory. Never reused with the same generation.
InodeNumber = NewType("InodeNumber", int)

#: Anything the I/O paths accept as data to write; memoryview slices avoid copies.
ByteData = bytes | bytearray | memoryview
