"""Full-resolution pictures through a terminal graphics protocol (Sixel, or Kitty's), drawn by textual-image.

Which one is decided once, before the app starts (once Textual reads the keyboard, the terminal's answers would
reach the app as keys). `ask_terminal` sends a Kitty graphics query and then "who are you" (DA1), and reads until
the answer to DA1: every terminal answers it, a Sixel terminal lists 4 in it, and one that speaks Kitty's protocol
answers its query first. So a plain terminal costs one round trip, not a timeout; textual-image (imported only
where there are pictures to draw) asks again at import, and gets its answers as fast. `--images` on
`mirante watch` and `replay`, or MIRANTE_IMAGES for any command, picks instead:

- `auto` (default): what the terminal says it speaks; cells when it speaks neither, under NO_COLOR, or when
  the output is not a terminal;
- `sixel`, `kitty`: that protocol, whatever the terminal says (one that lacks it shows nothing, or noise);
- `cells`: the half-block (or, under NO_COLOR, ASCII) drawing everywhere, which is also the fallback.
"""

from __future__ import annotations

import os
import re
import select
import sys
import termios
import time
import tty

MODES = ("auto", "sixel", "kitty", "cells")
ENV = "MIRANTE_IMAGES"
WAIT = 0.5  # seconds to wait for the terminal's answer (a slow ssh link); after it: cells
KITTY_QUERY = b"\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"  # "would you show this 1x1 image?", shows nothing
KITTY_OK = b"\x1b_Gi=31;OK"
DA1 = b"\x1b[c"
DA1_ANSWER = re.compile(rb"\x1b\[\?([0-9;]*)c")


class GraphicsError(ValueError):
    """A mode that is not one of MODES, or a protocol asked for without textual-image installed."""


def mode_from(flag: str | None) -> str:
    """The mode asked for: the flag, else MIRANTE_IMAGES, else auto."""
    mode = (flag or os.environ.get(ENV) or "auto").strip().lower()
    if mode not in MODES:
        where = "--images" if flag else ENV
        raise GraphicsError(f"{where} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def on_terminal() -> bool:
    return all(stream is not None and stream.isatty() for stream in (sys.__stdin__, sys.__stdout__))


def image_widget(flag: str | None = None) -> type | None:
    """The textual-image widget class that draws pictures here, or None: draw them in cells."""
    mode = mode_from(flag)
    if mode == "cells" or (mode == "auto" and ("NO_COLOR" in os.environ or not on_terminal())):
        return None
    protocol = mode
    if mode == "auto":
        sixel, kitty = ask_terminal()
        if not (sixel or kitty):
            return None
        protocol = "sixel" if sixel else "kitty"  # textual-image's order: Konsole and WezTerm say both, show Sixel
    try:
        import textual_image.widget as widgets  # asks the terminal too, and measures its cells in pixels
    except ImportError as exc:
        if mode == "auto":
            return None
        raise GraphicsError(f"--images {mode} needs textual-image ({exc})") from None
    return widgets.SixelImage if protocol == "sixel" else widgets.TGPImage


def ask_terminal(wait: float = WAIT) -> tuple[bool, bool]:
    """(speaks Sixel, speaks Kitty's graphics protocol), from the terminal's answers to a Kitty graphics query and
    DA1, read until DA1's answer or `wait` seconds; keys typed meanwhile are lost (textual-image does the same)."""
    fd_in, fd_out = sys.__stdin__.fileno(), sys.__stdout__.fileno()
    saved = termios.tcgetattr(fd_in)
    heard = b""
    try:
        tty.setcbreak(fd_in)  # the answers arrive unechoed, byte by byte
        os.write(fd_out, KITTY_QUERY + DA1)
        deadline = time.monotonic() + wait
        while not DA1_ANSWER.search(heard):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd_in], [], [], left)[0]:
                break
            heard += os.read(fd_in, 1024)
    except OSError:
        return False, False
    finally:
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
    answer = DA1_ANSWER.search(heard)
    sixel = answer is not None and b"4" in answer.group(1).split(b";")
    return sixel, KITTY_OK in heard


def protocol_name(widget: type | None) -> str:
    """What a user reads: sixel, kitty or cells."""
    if widget is None:
        return "cells"
    return "kitty" if "TGP" in widget.__name__ else "sixel"
