"""Allocator: policy, ENOSPC atomicity, free/mark_used checks, rebuild from used runs."""

import random

import pytest

from fusenas.errors import NoSpaceError
from fusenas.meta.allocator import Allocator


def _blocks(runs):
    return [b for s, n in runs for b in range(s, s + n)]


def test_allocate_and_free_random_against_set_model():
    rng = random.Random(7)
    a = Allocator(500)
    used: set[int] = set()
    held: list[list[tuple[int, int]]] = []
    for _ in range(2000):
        if held and rng.random() < 0.45:
            runs = held.pop(rng.randrange(len(held)))
            a.free(runs)
            used -= set(_blocks(runs))
        else:
            n = rng.randint(1, 40)
            goal = rng.choice([None, rng.randrange(500)])
            if n > 500 - len(used):
                before = a.runs()
                with pytest.raises(NoSpaceError):
                    a.allocate(n, goal=goal, stripe_blocks=8)
                assert a.runs() == before
                continue
            runs = a.allocate(n, goal=goal, stripe_blocks=8)
            got = _blocks(runs)
            assert len(got) == n and len(set(got)) == n
            assert not used & set(got)
            used |= set(got)
            held.append(runs)
        assert a.free_blocks == 500 - len(used)
        assert set(_blocks(a.runs())) == set(range(500)) - used
        assert a.runs() == Allocator.from_used(500, [r for h in held for r in h]).runs()


def test_goal_is_tried_first():
    a = Allocator(100)
    a.mark_used([(0, 10)])
    assert a.allocate(5, goal=10, stripe_blocks=16) == [(10, 5)]
    assert a.allocate(3, goal=15, stripe_blocks=16) == [(15, 3)]


def test_large_requests_are_stripe_aligned():
    a = Allocator(1000)
    a.mark_used([(0, 3)])
    runs = a.allocate(32, goal=None, stripe_blocks=16)
    assert runs == [(16, 32)]


def test_small_requests_fill_whole_free_stripes_before_holes():
    a = Allocator(200)
    a.mark_used([(0, 64)])
    a.free([(5, 1), (17, 1), (30, 2)])  # holes an overwrite workload leaves behind
    got = [a.allocate(1, stripe_blocks=8) for _ in range(12)]
    assert _blocks([r for runs in got for r in runs]) == list(range(64, 76))
    # A request crossing the end of the small-write stripe continues in the next one.
    assert a.allocate(6, stripe_blocks=8) == [(76, 6)]
    # Blocks of the stripe taken by a goal allocation are skipped, not waited for.
    assert a.allocate(1, goal=82, stripe_blocks=8) == [(82, 1)]
    assert a.allocate(3, stripe_blocks=8) == [(83, 3)]
    # A goal in a hole (free only up to inside its stripe) is not taken either.
    assert a.allocate(1, goal=17, stripe_blocks=8) == [(86, 1)]
    assert a.allocate(9, goal=30, stripe_blocks=8) == [(88, 9)]


def test_small_requests_best_fit_when_no_whole_stripe_is_free():
    a = Allocator(100)
    a.mark_used([(0, 10), (13, 10), (30, 70)])  # free: [10,13) size 3, [23,30) size 7
    assert a.allocate(3, goal=None, stripe_blocks=16) == [(10, 3)]
    assert a.allocate(2, goal=None, stripe_blocks=16) == [(23, 2)]


def test_falls_back_to_several_runs():
    a = Allocator(30)
    a.mark_used([(5, 5), (15, 5), (25, 5)])
    runs = a.allocate(15, goal=None, stripe_blocks=4)
    assert sorted(_blocks(runs)) == [*range(5), *range(10, 15), *range(20, 25)]
    with pytest.raises(NoSpaceError):
        a.allocate(1)


def test_double_free_and_bad_mark_used_are_bugs():
    a = Allocator(10)
    with pytest.raises(AssertionError):
        a.free([(2, 1)])
    a.mark_used([(0, 4)])
    with pytest.raises(AssertionError):
        a.mark_used([(3, 2)])
    a.free([(0, 4)])
    assert a.runs() == [(0, 10)]


def test_from_used_tolerates_overlap():
    a = Allocator.from_used(20, [(2, 5), (4, 5), (15, 10)])
    assert a.runs() == [(0, 2), (9, 6)]


def test_replay_window_spans_two_checkpoints():
    """A freed block may be named by replayable records until two checkpoints have been
    written after its freeing; a failed checkpoint does not count."""
    a = Allocator(100)
    assert not a.replay_safe(50, 10)  # nothing is known before two checkpoints
    for _ in range(2):
        a.checkpoint_written(a.start_checkpoint())
    assert a.replay_safe(0, 100)
    a.mark_used([(0, 20)])
    a.free([(5, 2)])
    assert not a.replay_safe(0, 6) and a.replay_safe(0, 5) and a.replay_safe(7, 93)
    token = a.start_checkpoint()
    a.free([(10, 1)])  # freed after the checkpoint took its position
    a.checkpoint_failed(token)
    assert not a.replay_safe(5, 1) and not a.replay_safe(10, 1)
    a.checkpoint_written(a.start_checkpoint())  # (5,2) and (10,1) now in the older generation
    assert not a.replay_safe(5, 1) and not a.replay_safe(10, 1)
    a.mark_used([(5, 2)])
    a.free([(5, 2)])  # freed again: twice in the window is fine
    a.checkpoint_written(a.start_checkpoint())
    assert a.replay_safe(10, 1) and not a.replay_safe(5, 2)
    a.checkpoint_written(a.start_checkpoint())
    assert a.replay_safe(0, 100)
