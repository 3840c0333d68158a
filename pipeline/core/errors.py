"""Errors a person can act on: the CLI prints them as one line and exits 2."""

from __future__ import annotations

import errno

# What the operating system (or Java, wrapping it) says when a write finds no room.
_NO_ROOM = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EFBIG: "File too large",
}


class UserError(ValueError):
    """Bad input, config or environment; the message names the problem and the fix."""


def no_room_message(exc: BaseException) -> str | None:
    """One actionable line when `exc` (or what caused it, in Python or in Spark's JVM) is a
    write that found the disk full, a quota used up or a file size limit reached; else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            where = f" writing {exc.filename}" if exc.filename else ""
            return _no_room(_NO_ROOM[exc.errno] + where)
        text = str(exc)
        for said in _NO_ROOM.values():
            if said in text:
                return _no_room(said)
        exc = exc.__cause__ or exc.__context__
    return None


def _no_room(said: str) -> str:
    return (
        f"no room to write ({said}): free space (or raise the quota or file size limit) where the run "
        "folder and Spark's scratch space (spark.local.dir, /tmp by default) live, or point --output at a larger disk; "
        "the interrupted stage was not marked complete and reruns from its start"
    )
