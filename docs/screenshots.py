"""Make the README's screenshots: one SVG per screen, drawn by the app from the sample runs.

python docs/screenshots.py    # writes docs/screens/*.svg
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tui.app import MiranteApp  # noqa: E402
from tui.sources import CompareSource, FollowSource  # noqa: E402

SIZE = (120, 36)
SMALL = (80, 24)  # a plain ssh terminal
FIND_CONV5 = ("4", "slash", "c", "o", "n", "v", "5", "enter")
SHOTS = [  # (key or keys, screen, run[, size])
    ("1", "overview", "smallcnn-shapes"),
    ("1", "overview-80x24", "smallcnn-shapes", SMALL),
    ("g", "config", "smallcnn-shapes", SMALL),
    ("t", "epochs", "smallcnn-shapes", SMALL),
    ("2", "gradients", "plainnet-sigmoid"),
    ("3", "model", "resnet18-shapes"),
    ("4", "activations", "smallcnn-shapes"),
    (("4", *["right_square_bracket"] * 7, "v"), "gradcam", "smallcnn-shapes"),  # image 8: a wrong guess
    (("4", "v", "v"), "confusion", "smallcnn-shapes"),
    ((*FIND_CONV5, "v", "v", "v"), "visualized", "smallcnn-shapes"),
    ("5", "diagnostics", "diverging-lr"),
    ("5", "diagnostics-sigmoid", "plainnet-sigmoid"),
    ("5", "lr-find", "lrfind-smallcnn"),
    ("6", "system", "resnet18-shapes"),
]

COMPARES = [  # (key, screen, runs)
    ("1", "compare", ("smallcnn-shapes", "smallcnn-seed1", "plainnet-relu", "plainnet-sigmoid")),
    ("3", "compare-layers", ("plainnet-relu", "plainnet-sigmoid")),
]


async def shoot(key: str | tuple[str, ...], screen: str, run: str, out: Path, size: tuple[int, int] = SIZE) -> None:
    store = ROOT / "sample_runs" / f"{run}.mirante"
    app = MiranteApp(FollowSource(store), store=store)
    async with app.run_test(size=size) as pilot:
        while not app.source.done:
            await pilot.pause(0.1)
        await pilot.press(*((key,) if isinstance(key, str) else key))
        await pilot.pause(0.5)
        app.save_screenshot(filename=f"{screen}.svg", path=str(out))
        await pilot.press("escape", "q")  # a view opened by its key closes first


async def shoot_compare(key: str, screen: str, runs: tuple[str, ...], out: Path) -> None:
    app = MiranteApp(CompareSource([ROOT / "sample_runs" / f"{run}.mirante" for run in runs]))
    async with app.run_test(size=SIZE) as pilot:
        while not app.source.done or app._inbox:
            await pilot.pause(0.1)
        await pilot.press(key)
        await pilot.pause(0.5)
        app.save_screenshot(filename=f"{screen}.svg", path=str(out))
        await pilot.press("q")


def main() -> None:
    out = ROOT / "docs" / "screens"
    out.mkdir(parents=True, exist_ok=True)
    for key, screen, run, *size in SHOTS:
        asyncio.run(shoot(key, screen, run, out, *size))
        print(f"docs/screens/{screen}.svg  ({run})")
    for key, screen, runs in COMPARES:
        asyncio.run(shoot_compare(key, screen, runs, out))
        print(f"docs/screens/{screen}.svg  ({', '.join(runs)})")


if __name__ == "__main__":
    main()
