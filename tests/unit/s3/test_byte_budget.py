"""The run's byte budget for request bodies, and the small-entry lane's own beside it (issue 12: a large upload's
parts, which fill the shared budget and reserve in arrival order, held every small PUT back)."""

from __future__ import annotations

import anyio

from amgmt.parts import MiB
from amgmt.s3 import ByteBudget


async def test_a_small_body_does_not_wait_behind_parts_that_fill_the_shared_budget() -> None:
    budget = ByteBudget(8 * MiB, small_body=MiB, small_limit=2 * MiB)
    part_held, part_waiting_started, release = anyio.Event(), anyio.Event(), anyio.Event()

    async def part(first: bool) -> None:
        if not first:
            part_waiting_started.set()
        async with budget.hold(8 * MiB):
            if first:
                part_held.set()
            await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(part, True)
            await part_held.wait()
            tg.start_soon(part, False)  # queued: the whole budget is held
            await part_waiting_started.wait()
            async with budget.hold(100_000), budget.hold(MiB):  # small bodies: their own budget, at once
                assert budget.small is not None and budget.small.held == 100_000 + MiB
                assert budget.held == 8 * MiB
            release.set()
    assert budget.peak == 8 * MiB and budget.small.peak == 100_000 + MiB


async def test_small_bodies_are_bounded_by_their_own_budget() -> None:
    budget = ByteBudget(8 * MiB, small_body=MiB, small_limit=2 * MiB)
    entered = 0

    async def body() -> None:
        nonlocal entered
        async with budget.hold(MiB):
            entered += 1
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(body)
    assert entered == 6 and budget.small is not None and budget.small.peak == 2 * MiB and budget.peak == 0


async def test_without_a_small_budget_every_body_shares_one() -> None:
    budget = ByteBudget(4 * MiB)
    assert budget.small is None
    async with budget.hold(1000):
        assert budget.held == 1000
