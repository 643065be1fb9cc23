"""Power cuts at random points of seeded random workloads, for every RAID level.

Every cut is recovered by the real mount-time recovery and must pass the three checks of
``tests.crash.harness``; RAID5/6 cuts are also recovered with a member lost after the cut
(one for RAID5, two for RAID6), which is exactly the write-hole case.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fusenas.engine import open_volume
from fusenas.volume.layout import Level
from tests.crash.harness import PowerCutProvider, Workload, make_volume, recover_and_check

WORKLOADS = 6
STEPS = 40
CUTS_PER_WORKLOAD = 40

LEVELS = [
    (Level.RAID0, 3),
    (Level.RAID1, 2),
    (Level.RAID5, 4),
    (Level.RAID6, 5),
    (Level.RAID10, 4),
]


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
@pytest.mark.parametrize("seed", range(WORKLOADS))
async def test_power_cut(tmp_path: Path, level: Level, members: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + int(level))
    voldir = tmp_path / "vol"
    provider = PowerCutProvider(random.Random(seed))
    await make_volume(voldir, level, members, provider)
    provider.record()
    async with open_volume(
        voldir, provider=provider, checkpointer=False, max_dirty=64 << 10
    ) as vol:
        work = Workload(vol, rng, provider)
        for i in range(STEPS):
            await work.step()
            if i % 15 == 14:
                await vol.checkpoint()
    total = len(provider.events)
    member_paths = sorted(p for p in provider.devices if p.name.startswith("member-"))
    for n in sorted(rng.sample(range(1, total + 1), min(total, CUTS_PER_WORKLOAD))):
        cut = provider.cut(n, rng)
        await recover_and_check(voldir, cut, work.history)
        if level in (Level.RAID5, Level.RAID6):
            lost = rng.sample(member_paths, 1 if level == Level.RAID5 else 2)
            await recover_and_check(voldir, cut, work.history, lose=lost)
