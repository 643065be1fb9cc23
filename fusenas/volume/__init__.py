"""The virtual RAID volume: members, superblocks, layout, parity and the logical array."""
