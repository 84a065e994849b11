"""Output-folder faults: an unusable or full output folder is a clear error before training, and a checkpoint write
that fails (disk full) never replaces or hides the previous good checkpoint.
"""
import errno
import os
import resource
from pathlib import Path

import pytest

from backbones.utils.checkpoint import load_checkpoint
from fault_helpers import TRAINING_TOOLS as TOOLS
from fault_helpers import (assert_same_weights, checkpoint_folder, det_args, listing, one_thread,  # noqa: F401
                           reference_run, run_main, run_tool, shared_data_root, tool_args, tool_env)


@pytest.mark.parametrize("tool", TOOLS)
def test_output_dir_that_cannot_be_created_fails_before_training(tool, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder's parent should be")
    run_dir, data_root = blocker / "run", tmp_path / "datasets"
    code, out = run_main(tool, tool_args(tool, run_dir, data_root=data_root))
    assert code == 1
    assert out.strip().startswith(f"error: --output-dir: output folder {run_dir} is not writable"), out
    assert len(out.strip().splitlines()) == 1
    assert not data_root.exists()  # stopped before the dataset was even generated


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("tool", TOOLS)
def test_read_only_output_dir_fails_before_training(tool, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        code, out = run_main(tool, tool_args(tool, run_dir, data_root=tmp_path / "datasets"))
    finally:
        run_dir.chmod(0o700)
    assert code == 1 and f"output folder {run_dir} is not writable" in out, out
    assert list(run_dir.iterdir()) == []


def _file_size_limit(limit_bytes):
    # The kernel refuses writes past the limit (EFBIG; Python ignores SIGXFSZ): a disk that is full at that size.
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


@pytest.mark.parametrize("tool", TOOLS)
def test_full_disk_is_reported_before_training(tool, tmp_path):
    run_dir, data_root = tmp_path / "run", tmp_path / "datasets"
    done = run_tool(tool, tool_args(tool, run_dir, data_root=data_root), tool_env(data_root),
                    preexec_fn=_file_size_limit(1))
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip() == f"error: --output-dir: output folder {run_dir} is not writable: File too large"
    assert not data_root.exists()
    assert not run_dir.exists() or list(run_dir.iterdir()) == []  # not even the probe file is left behind


def _fail_checkpoint_write(monkeypatch, name):
    """Disk full while ``name`` is being written: half of it reaches the temp file, then fsync reports ENOSPC."""
    real_fsync = os.fsync

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being written")
@pytest.mark.parametrize("tool", TOOLS)
def test_failed_checkpoint_write_keeps_previous_checkpoints(tool, tmp_path, tmp_path_factory, monkeypatch,
                                                           one_thread):
    run_dir = tmp_path / "run"
    data_root = shared_data_root(tmp_path_factory)
    folder = checkpoint_folder(tool, run_dir)
    before = {}

    def snapshot_then_fail():
        before.update({k: v for k, v in listing(folder).items() if k.startswith(("model_", "last_checkpoint"))})
        _fail_checkpoint_write(monkeypatch, "model_0000006.pth")

    # Let the checkpoints at 2 and 4 be written, then make the one at 6 fail.
    _fail_after(monkeypatch, tool, 4, snapshot_then_fail)
    code, output = run_main(tool, tool_args(tool, run_dir, data_root=data_root))
    monkeypatch.undo()
    assert code == 1  # one error line, not a traceback
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in output

    after = listing(folder)
    assert sorted(k for k in after if k.startswith("model_")) == [
        "model_0000002.pth", "model_0000002.pth.sha256", "model_0000004.pth", "model_0000004.pth.sha256"]
    assert {k: after[k] for k in before} == before  # every earlier file byte-identical
    assert after["last_checkpoint"].decode().strip() == "model_0000004.pth"
    assert not [k for k in after if k.endswith(".tmp")]
    assert load_checkpoint(folder / "model_0000004.pth")["iteration"] == 4

    code, out = run_main(tool, tool_args(tool, run_dir, data_root=data_root, flags=["--resume"]))
    assert code == 0, out[-3000:]
    assert f"resumed from {folder / 'model_0000004.pth'} at iteration 4" in out
    assert_same_weights(run_dir / "model_final.pth", reference_run(tool, tmp_path_factory) / "model_final.pth")


def _fail_after(monkeypatch, tool, iteration, action):
    """Call ``action`` once, right after the checkpoint of ``iteration`` has been saved."""
    from backbones.utils.checkpoint import CheckpointManager

    real_save = CheckpointManager.save

    def save(self, obj, at, name=None):
        path = real_save(self, obj, at, name)
        if at == iteration:
            action()
        return path

    monkeypatch.setattr(CheckpointManager, "save", save)


@pytest.mark.slow
def test_checkpoint_cut_short_by_a_full_disk_is_never_used(tmp_path, tmp_path_factory):
    """A real partial write: the second process may only write files smaller than half a checkpoint."""
    data_root = shared_data_root(tmp_path_factory)
    env = tool_env(data_root)
    run_dir = tmp_path / "run"
    first = run_tool("train_det.py", det_args(run_dir, data_root=data_root, flags=["--stop-after", "4"]), env)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = run_dir / "checkpoints"
    before = listing(folder)
    half = len(before["model_0000004.pth"]) // 2

    full = run_tool("train_det.py", det_args(run_dir, data_root=data_root, flags=["--resume"]), env,
                    preexec_fn=_file_size_limit(half))
    assert full.returncode != 0 and "File too large" in full.stderr, full.stderr[-3000:]
    assert listing(folder) == before  # nothing replaced, nothing half-written left behind

    again = run_tool("train_det.py", det_args(run_dir, data_root=data_root, flags=["--resume"]), env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {folder / 'model_0000004.pth'} at iteration 4" in again.stderr
