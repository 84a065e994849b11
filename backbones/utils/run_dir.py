"""Checks on a run's output folder, done before any training work starts."""
from pathlib import Path
from typing import Optional

from .atomic_io import PathLike, check_writable
from .checkpoint import CheckpointManager


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked (not writable, or it already holds another run)."""


def prepare_run_dir(output_dir: PathLike, resume: bool, checkpoint_dir: Optional[PathLike] = None) -> Path:
    """Create ``output_dir`` and prove it writable; refuse to start over a run's checkpoints unless resuming.

    ``checkpoint_dir`` is where the run keeps its ``model_<iter>.pth`` files (default: ``output_dir`` itself).
    Call it on the main process only.
    """
    output_dir = Path(output_dir)
    try:
        check_writable(output_dir)
    except OSError as e:
        raise RunFolderError(f"--output-dir: {e}") from e
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else output_dir
    if not resume and CheckpointManager(folder).list():
        raise RunFolderError(
            f"{output_dir} already holds checkpoints of a run; pass --resume to continue it or choose another "
            "--output-dir"
        )
    return output_dir
