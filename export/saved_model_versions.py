"""The versions of a TF Serving model folder (`BASE/NAME/VERSION/`) and how an export publishes
one atomically: written into a hidden staging folder beside them (`.tmp-VERSION-PID-*`, which TF
Serving ignores: not a number), then renamed into place. No TensorFlow here: `backends` reads the
versions too."""

import os
import re
import shutil
import tempfile

from tf_mistral.atomic import pid_alive

_TEMPORARY = re.compile(r"\.(tmp|old)-\d+-(?P<pid>\d+)-\w+")  # an export's staging or retired folder


def existing_versions(base: str | os.PathLike) -> list[int]:
    """Sorted version numbers under `base` (folders named by an integer, as TF Serving reads them)."""
    if not os.path.isdir(base):
        return []
    return sorted(int(name) for name in os.listdir(base) if name.isdigit() and os.path.isdir(os.path.join(base, name)))


def resolve_version(base: str | os.PathLike, version: int | None, overwrite: bool) -> int:
    """The version to write: `version`, or one above the highest existing (1 when none)."""
    versions = existing_versions(base)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    if version in versions and not overwrite:
        raise FileExistsError(
            f"{os.path.join(base, str(version))} already exists: pick another --version, leave it out for the "
            f"next free one ({versions[-1] + 1}), or pass --overwrite to replace it"
        )
    return version


def staging_folder(base: str | os.PathLike, version: int) -> str:
    """A new hidden folder `base/.tmp-VERSION-PID-XXXXXXXX` to write the export into (readable by
    a server running as another user); the pid tells later exports whether it is still in use."""
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-", dir=base)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
    return staging


def remove_dead_exports(base: str | os.PathLike) -> list[str]:
    """Removes the staging (`.tmp-VERSION-PID-*`) and retired (`.old-VERSION-PID-*`) folders under
    `base` whose process no longer runs: what exports killed midway left. Returns their names."""
    if not os.path.isdir(base):
        return []
    dead = [name for name in sorted(os.listdir(base))
            if (match := _TEMPORARY.fullmatch(name)) and not pid_alive(int(match["pid"]))]
    for name in dead:
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return dead


def publish(staging: str | os.PathLike, base: str | os.PathLike, version: int) -> str:
    """Renames the finished `staging` folder to `base/version`; an old version is moved aside
    first and deleted after (the only moment TF Serving may find the version missing)."""
    target = os.path.join(base, str(version))
    retired = None
    if os.path.exists(target):
        retired = tempfile.mkdtemp(prefix=f".old-{version}-{os.getpid()}-", dir=base)
        os.rename(target, os.path.join(retired, "model"))
    os.rename(staging, target)
    if retired:
        shutil.rmtree(retired, ignore_errors=True)
    return target


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
