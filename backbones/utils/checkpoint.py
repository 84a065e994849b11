"""Checkpoints: atomic, checksummed, loaded with ``weights_only=True``, with a keep-last-N manager."""
import hashlib
import io
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .atomic_io import PathLike, atomic_write_bytes, atomic_write_text

CHECKSUM_SUFFIX = ".sha256"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or does not match its checksum."""


def save_checkpoint(obj: Dict[str, Any], path: PathLike) -> Path:
    """Serialise ``obj`` with torch.save, then write it and its sha256 sidecar atomically.

    The sidecar is written after the data, so a checkpoint whose sidecar exists was completely written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + CHECKSUM_SUFFIX), hashlib.sha256(data).hexdigest() + "\n")
    return path


def load_checkpoint(path: PathLike, map_location="cpu", verify: bool = True) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; verify the sha256 sidecar when there is one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if verify and sidecar.is_file():
        expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        actual = hashlib.sha256(data).hexdigest()
        if expected != actual:
            raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {actual[:12]}… != recorded {expected[:12]}…")
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


class CheckpointManager:
    """Periodic checkpoints ``model_{iter:07d}.pth`` in one folder, the last ``keep_last`` kept.

    ``last_checkpoint`` (a text file, as in detectron2) names the newest complete one. ``load_latest`` falls back to the
    previous good checkpoint when the newest is corrupt, and says so on stderr.
    """

    PATTERN = re.compile(r"^model_(\d+)\.pth$")
    # Temp files of atomic writes (atomic_io.atomic_open) that a killed process left behind.
    STALE_TEMP = re.compile(r"^\.(model_\d+\.pth(\.sha256)?|last_checkpoint)\..+\.tmp$")

    def __init__(self, folder: PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def path_for(self, iteration: int) -> Path:
        return self.folder / f"model_{iteration:07d}.pth"

    def save(self, obj: Dict[str, Any], iteration: int, name: Optional[str] = None) -> Path:
        path = self.folder / name if name else self.path_for(iteration)
        save_checkpoint(obj, path)
        atomic_write_text(self.folder / "last_checkpoint", path.name + "\n")
        self._prune()
        return path

    def list(self) -> List[Path]:
        """Periodic checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self.PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def _prune(self) -> None:
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)

    def load_latest(self, map_location="cpu"):
        """Return ``(path, checkpoint)`` of the newest readable checkpoint, or ``(None, None)`` when there is none."""
        if self.folder.is_dir():
            for stale in [p for p in self.folder.iterdir() if self.STALE_TEMP.match(p.name)]:
                stale.unlink(missing_ok=True)
        candidates = self.list()
        pointer = self.folder / "last_checkpoint"
        if pointer.is_file():
            named = self.folder / pointer.read_text().strip()
            if named.is_file() and named not in candidates:
                candidates.append(named)
        for path in reversed(candidates):
            try:
                return path, load_checkpoint(path, map_location)
            except CheckpointError as e:
                print(f"[resdet] {e}; falling back to the previous checkpoint", file=sys.stderr)
        return None, None

