"""Crash-safe file writes: write a temp file in the same folder, fsync, then rename over the target."""
import json
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, IO, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Yield a temp file next to ``path``; on success it replaces ``path`` atomically, on error it is removed.

    A reader never sees a half-written file and an existing good file is never replaced by a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give the result the permissions a plain open() would (0666 minus umask).
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_umask() -> int:
    # Read once at import: os.umask can only be queried by setting it, which is racy once threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported everywhere, which is harmless.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


def check_writable(folder: PathLike, min_free_bytes: int = 0) -> None:
    """Fail early, before any work, when ``folder`` cannot be written or has less than ``min_free_bytes`` free."""
    folder = Path(folder)
    probe = folder / ".resdet_write_probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as e:
        raise OSError(f"output folder {folder} is not writable: {e.strerror or e}") from e
    finally:
        # Also when the write failed half-way (disk full): the probe must not be left in the run folder.
        with suppress(OSError):
            probe.unlink(missing_ok=True)
    if min_free_bytes:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        if free < min_free_bytes:
            raise OSError(
                f"output folder {folder} has {free / 2**20:.1f} MiB free; at least "
                f"{min_free_bytes / 2**20:.1f} MiB are needed for checkpoints"
            )
