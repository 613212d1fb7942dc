"""Small files written whole or not at all."""

import json
import os


def write_json(path, value):
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


def remove(path):
    """Removes the file at `path` if it is there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
