"""Driving the app in the tests (Textual's Pilot) and reading what its widgets show."""

from __future__ import annotations

import asyncio


def text_of(widget) -> str:
    """What a widget shows, as plain text."""
    if hasattr(widget, "strips"):
        return "\n".join(strip.text for strip in widget.strips())
    return str(widget.render())


def drive(app, size: tuple[int, int], script, *, wait_end: bool = True, tries: int = 100) -> None:
    """Run `app` at `size`, let its source deliver (until the run's end, with `wait_end`), then `await script(app,
    pilot)`."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            for _ in range(tries):
                await pilot.pause(0.05)
                if not wait_end or app.source.done and app.state.ended is not None:
                    break
            if wait_end:  # all delivered: draw it now rather than wait for the redraw timer
                app.redraw(force=True)
                await pilot.pause()
            else:
                await pilot.pause(0.2)
            await script(app, pilot)

    asyncio.run(main())


async def until(pilot, condition, timeout: float = 5.0) -> None:
    """Let the app run until `condition()` holds (what its 0.2 s redraw timer does, for instance); fail past
    `timeout` seconds, rather than sleeping a fixed time that a busy machine may not honour."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout} s: {condition.__doc__ or condition}"
        await pilot.pause(0.05)
