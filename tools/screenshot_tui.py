"""Save an SVG screenshot of `conva-mlx chat` mid-conversation (for the README).

    python tools/screenshot_tui.py [--model default] [--pack DIR] [--out docs/chat.svg]

Without --pack, a two-value pack (benevolence, power) is extracted first (a minute or two).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from textual.widgets import Input

from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.models.loading import load_model
from conva_mlx.packs.pack import Pack, load_pack
from tui.app import ChatApp

QUESTION = "My coworker is struggling with a deadline but I have my own work. What should I do?"


async def shoot(app: ChatApp, out: Path) -> None:
    async with app.run_test(size=(130, 40)) as pilot:
        prompt = app.query_one("#prompt", Input)
        prompt.cursor_blink = False
        prompt.focus()
        await pilot.press(*QUESTION, "enter")
        await pilot.pause(0.2)
        while app.busy:
            await pilot.pause(0.1)
        await pilot.pause(0.2)
        app.save_screenshot(filename=out.name, path=str(out.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default", help="e.g. qwen2.5-0.5b")
    ap.add_argument("--pack", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/chat.svg"))
    ap.add_argument("--max-tokens", type=int, default=60)
    args = ap.parse_args()
    lm = load_model(args.model)
    pack: Pack = (load_pack(args.pack) if args.pack else
                  extract_pack(lm, ["benevolence", "power"],
                               opts=ExtractOptions(with_uncontrolled=False), show_progress=True))
    app = ChatApp(lm=lm, pack=pack, state_dir=Path(tempfile.mkdtemp()),
                  max_tokens=args.max_tokens)
    app.settings.values["benevolence"].direction = "toward"
    app.settings.values["benevolence"].p0 = 0.97
    app.settings.compare = True
    app.settings.gate = False
    args.out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(shoot(app, args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
