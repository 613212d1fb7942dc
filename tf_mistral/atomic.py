"""Small files written whole or not at all, and whether the writer of a leftover still runs."""

import json
import os
from typing import Any


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes `value` as indented, key-sorted JSON at `path`: a temporary file `PATH.tmp-PID`,
    flushed to disk, then renamed over `path`, so a reader sees the old file or the new one."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        remove(temporary)
        raise


def remove(path: str | os.PathLike) -> None:
    """Removes the file at `path` if it is there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running (on this machine): a leftover named with the pid of a
    process that is not is stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True
