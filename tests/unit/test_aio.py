"""croupier/aio.py: stopping a control-plane task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from croupier.aio import cancelled


def test_a_running_task_is_cancelled_and_its_cleanup_has_run_when_it_returns():
    cleaned: list[str] = []

    async def part() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)          # cleanup that itself awaits
            cleaned.append("done")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(part())
        await asyncio.sleep(0)
        await cancelled(task)
        assert task.cancelled() and cleaned == ["done"]
        await cancelled(None)
    asyncio.run(main())


def test_a_task_that_had_died_of_an_error_is_logged(caplog: pytest.LogCaptureFixture):
    async def part() -> None:
        raise RuntimeError("the watch broke")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(part(), name="fleet watch")
        await asyncio.sleep(0)
        await cancelled(task)
    with caplog.at_level(logging.ERROR, logger="croupier"):
        asyncio.run(main())
    assert "fleet watch had stopped on an error" in caplog.text
    assert "the watch broke" in caplog.text
