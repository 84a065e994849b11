"""Atomic, checksummed checkpoints; keep-last-N; fallback to the previous good one."""
import os

import pytest
import torch

from backbones.utils.atomic_io import atomic_open, atomic_write_json, check_writable
from backbones.utils.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint


def _state(i):
    return {"iteration": i, "model": {"w": torch.full((3,), float(i))}}


def test_roundtrip_and_checksum(tmp_path):
    path = save_checkpoint(_state(1), tmp_path / "a.pth")
    assert (tmp_path / "a.pth.sha256").is_file()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_corrupt_bytes_are_detected(tmp_path):
    path = save_checkpoint(_state(1), tmp_path / "a.pth")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_truncated_without_sidecar_is_detected(tmp_path):
    path = save_checkpoint(_state(1), tmp_path / "a.pth")
    (tmp_path / "a.pth.sha256").unlink()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_manager_keeps_last_n_and_falls_back(tmp_path, capsys):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for i in (10, 20, 30):
        manager.save(_state(i), i)
    assert [p.name for p in manager.list()] == ["model_0000020.pth", "model_0000030.pth"]
    newest = manager.path_for(30)
    newest.write_bytes(newest.read_bytes()[:50])  # a crash mid-copy by some other tool
    path, ckpt = manager.load_latest()
    assert path == manager.path_for(20) and ckpt["iteration"] == 20
    assert "falling back" in capsys.readouterr().err


def test_manager_empty_folder(tmp_path):
    assert CheckpointManager(tmp_path / "none").load_latest() == (None, None)


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write('{"partial": ')
            raise RuntimeError("disk full")
    assert target.read_text().strip().startswith('{\n  "ok": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_nan_is_not_written_as_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="not writable"):
        check_writable(blocker / "out")  # a path below a regular file cannot be created, even by root
    with pytest.raises(OSError, match="MiB free"):
        check_writable(tmp_path, min_free_bytes=2**62)
