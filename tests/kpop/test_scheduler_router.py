"""The engine router's lease rule (kpop.scheduler.router), on the plain class: least-loaded
placement, `exclude`, and generations that keep a late death report from killing a replacement."""

import asyncio

from kpop.rollout.routing import EngineLease
from kpop.scheduler.router import _EngineRouter


def test_acquire_leases_least_loaded_engine_and_honours_exclude():
    async def main():
        router = _EngineRouter(["e0", "e1"])
        first = await router.acquire("a")
        second = await router.acquire("b")
        moved = await router.acquire("c", exclude=0)
        return first, second, moved, router.moved

    first, second, moved, moved_count = asyncio.run(main())
    assert first == EngineLease(0, "e0", 0)
    assert second == EngineLease(1, "e1", 0)
    assert moved.index == 1 and moved_count == 1


def test_late_death_report_does_not_mark_the_replacement_dead():
    async def main():
        router = _EngineRouter(["e0", "e1"])
        old = await router.acquire("a")
        router.release("a")
        router.report_dead(old.index, old.generation)
        assert router.dead() == [0]
        assert router.replace(0, "e0-new") == 1
        router.report_dead(old.index, old.generation)  # a second worker saw the old engine die
        assert router.dead() == []
        lease = await router.acquire("b")
        return lease

    assert asyncio.run(main()) == EngineLease(0, "e0-new", 1)
