"""Crash safety: kill -9 then --resume gives the uninterrupted run's weights; corrupt checkpoints; keep-last-N.

The tiny runs (fault_helpers.PRETRAIN_TINY / DET_TINY) train 12 iterations with a checkpoint every 2 and keep 2.
"""
import os
import random
import shutil
import signal

import pytest

from backbones.utils.checkpoint import CHECKSUM_SUFFIX, load_checkpoint
from fault_helpers import TRAINING_TOOLS as TOOLS
from fault_helpers import (assert_same_weights, checkpoint_folder, logged_iterations, one_thread,  # noqa: F401
                           reference_run, run_main, run_tool, shared_data_root, start_tool, tool_args, tool_env,
                           wait_for)


@pytest.mark.parametrize("tool", TOOLS)
def test_keep_last_n_checkpoints(tool, tmp_path_factory, one_thread):
    folder = checkpoint_folder(tool, reference_run(tool, tmp_path_factory))
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("model_0"))
    # keep_last=2 of the checkpoints at 2, 4, ..., 12; each with its checksum, nothing half-written left over.
    assert names == ["model_0000010.pth", "model_0000010.pth" + CHECKSUM_SUFFIX,
                     "model_0000012.pth", "model_0000012.pth" + CHECKSUM_SUFFIX]
    assert (folder / "last_checkpoint").read_text().strip() == "model_0000012.pth"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(folder / "model_0000012.pth")["iteration"] == 12


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate, _flip_byte], ids=["truncated", "flipped_byte"])
@pytest.mark.parametrize("tool", TOOLS)
def test_corrupt_newest_checkpoint_falls_back_to_previous(tool, corrupt, tmp_path, tmp_path_factory, one_thread):
    reference = reference_run(tool, tmp_path_factory)
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    folder = checkpoint_folder(tool, run_dir)
    corrupt(folder / "model_0000012.pth")

    code, out = run_main(tool, tool_args(tool, run_dir, data_root=shared_data_root(tmp_path_factory),
                                         flags=["--resume"]))

    assert code == 0, out[-3000:]
    assert "model_0000012.pth is corrupt" in out and "falling back to the previous checkpoint" in out
    assert f"resumed from {folder / 'model_0000010.pth'} at iteration 10" in out
    # Iterations 11-12 were redone from the good checkpoint: the result is the uninterrupted run's.
    assert_same_weights(run_dir / "model_final.pth", reference / "model_final.pth")
    assert load_checkpoint(folder / "model_0000012.pth")["iteration"] == 12  # rewritten whole


@pytest.mark.parametrize("tool", TOOLS)
def test_resume_removes_temp_files_of_a_killed_write(tool, tmp_path, tmp_path_factory, one_thread):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run(tool, tmp_path_factory), run_dir)
    folder = checkpoint_folder(tool, run_dir)
    half = (folder / "model_0000012.pth").read_bytes()[:1000]
    stale = [".model_0000014.pth.a1b2c3.tmp", ".model_0000014.pth.sha256.d4e5.tmp", ".last_checkpoint.f6g7.tmp"]
    for name in stale:
        (folder / name).write_bytes(half)
    (folder / ".notes.tmp").write_text("not ours")

    code, out = run_main(tool, tool_args(tool, run_dir, data_root=shared_data_root(tmp_path_factory),
                                         flags=["--resume"]))

    assert code == 0, out[-3000:]
    assert not [name for name in stale if (folder / name).exists()]
    assert (folder / ".notes.tmp").read_text() == "not ours"


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_sigkill_then_resume_matches_uninterrupted_run(tool, tmp_path, tmp_path_factory):
    """SIGKILL the tool at a random iteration after its first checkpoint; ``--resume`` ends bit-identical."""
    seed = int(os.environ.get("RESDET_FAULT_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    longer = ["solver.max_iter=30", "solver.steps=[20]"]  # a wider window to land the kill in
    data_root = shared_data_root(tmp_path_factory)
    env = tool_env(data_root)

    straight = tmp_path / "uninterrupted"
    done = run_tool(tool, tool_args(tool, straight, *longer, data_root=data_root), env)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "killed"
    kill_after = rng.randint(3, 24)
    proc = start_tool(tool, tool_args(tool, run_dir, *longer, data_root=data_root), env, tmp_path / "killed.log")
    try:
        folder = checkpoint_folder(tool, run_dir)
        wait_for(lambda: (folder / "last_checkpoint").is_file() and logged_iterations(run_dir) >= kill_after,
                 timeout=240, what=f"iteration {kill_after}", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the run ended before the kill"
    assert not (run_dir / "final.json").exists(), f"seed {seed}: the run finished before the kill"

    resumed = run_tool(tool, tool_args(tool, run_dir, *longer, data_root=data_root, flags=["--resume"]), env)
    assert resumed.returncode == 0, f"seed {seed}\n{resumed.stderr[-3000:]}"
    assert "resumed from" in resumed.stderr, f"seed {seed}\n{resumed.stderr[-3000:]}"
    assert_same_weights(run_dir / "model_final.pth", straight / "model_final.pth")
