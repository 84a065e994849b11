"""Distributed faults (2 CPU processes, gloo): a dead or hung rank makes the others exit non-zero instead of hanging;
``torchrun --max-restarts 1`` restarts a job that lost a rank and it resumes from the last checkpoint.

All slow: each case starts 2-4 training processes.
"""
import os
import random
import signal
import subprocess
import time

import pytest

from fault_helpers import (REPO, assert_same_weights, checkpoint_folder, logged_iterations, shared_data_root,
                           start_ranks, stop_all, tool_args, tool_env, torchrun_cmd, wait_for, worker_pid)

pytestmark = pytest.mark.slow

TOOLS = ("pretrain.py", "train_det.py")
TIMEOUT_KEY = {"pretrain.py": "train.dist_timeout_s", "train_det.py": "dist_timeout_s"}
# Long enough not to finish before the fault; batch 2 splits over the 2 processes.
LONG = {"pretrain.py": ["solver.max_iter=400", "solver.steps=[300]"],
        "train_det.py": ["solver.max_iter=400", "solver.steps=[300]", "solver.ims_per_batch=2"]}


def _survivor_exit(tool, tmp_path, tmp_path_factory, fault, timeout_s=None):
    """Signal rank 1 of a 2-process run at iteration 3; returns (rank 0's exit code, seconds it took, its log)."""
    data_root = shared_data_root(tmp_path_factory)
    run_dir = tmp_path / "run"
    timeout = [f"{TIMEOUT_KEY[tool]}={timeout_s}"] if timeout_s else []
    args = tool_args(tool, run_dir, *LONG[tool], *timeout, data_root=data_root)
    procs = start_ranks(tool, args, tool_env(data_root), tmp_path)
    try:
        wait_for(lambda: logged_iterations(run_dir) >= 3, timeout=240, what="iteration 3", proc=procs[0])
        faulted = time.monotonic()
        procs[1].send_signal(fault)
        try:
            code = procs[0].wait(timeout=(timeout_s or 0) + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still running {(timeout_s or 0) + 60} s after rank 1 got signal {fault}")
        return code, time.monotonic() - faulted, (tmp_path / "rank0.log").read_text()
    finally:
        stop_all(procs)


@pytest.mark.parametrize("tool", TOOLS)
def test_dead_rank_makes_the_other_exit_non_zero(tool, tmp_path, tmp_path_factory):
    code, elapsed, log = _survivor_exit(tool, tmp_path, tmp_path_factory, signal.SIGKILL)
    assert code != 0, log[-3000:]
    assert elapsed < 60, f"rank 0 took {elapsed:.0f} s to notice the dead peer"


@pytest.mark.parametrize("tool", TOOLS)
def test_hung_rank_makes_the_other_exit_within_the_timeout(tool, tmp_path, tmp_path_factory):
    """SIGSTOP keeps rank 1's sockets open, so only the collective timeout can end rank 0's wait."""
    code, elapsed, log = _survivor_exit(tool, tmp_path, tmp_path_factory, signal.SIGSTOP, timeout_s=15)
    assert code != 0, log[-3000:]
    # gloo words it "Timed out ..." or "Application timeout caused pair closure", depending on where rank 0 waits.
    assert "timed out" in log.lower() or "timeout" in log.lower(), log[-3000:]
    assert elapsed < 15 + 45, f"rank 0 exited {elapsed:.0f} s after rank 1 hung; timeout 15 s"


def _torchrun(tool, args, env, log, max_restarts=0):
    with open(log, "w") as handle:
        return subprocess.Popen(torchrun_cmd(tool, args, max_restarts=max_restarts), env=env, cwd=REPO,
                                stdout=handle, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("tool", TOOLS)
def test_torchrun_restart_resumes_from_the_last_checkpoint(tool, tmp_path, tmp_path_factory):
    seed = int(os.environ.get("RESDET_FAULT_SEED", random.SystemRandom().randrange(2**31)))
    kill_after = random.Random(seed).randint(3, 16)
    data_root = shared_data_root(tmp_path_factory)
    env = tool_env(data_root)
    shape = ["solver.max_iter=24", "solver.steps=[16]"] + (["solver.ims_per_batch=2"] if tool == "train_det.py"
                                                           else [])

    straight = _torchrun(tool, tool_args(tool, tmp_path / "straight", *shape, data_root=data_root), env,
                         tmp_path / "straight.log")
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    run_dir = tmp_path / "restarted"
    agent = _torchrun(tool, tool_args(tool, run_dir, *shape, data_root=data_root, flags=["--resume"]), env,
                      tmp_path / "restarted.log", max_restarts=1)
    try:
        folder = checkpoint_folder(tool, run_dir)
        wait_for(lambda: (folder / "last_checkpoint").is_file() and logged_iterations(run_dir) >= kill_after,
                 timeout=300, what=f"iteration {kill_after}", proc=agent)
        victim = worker_pid(agent.pid, rank=1)
        assert victim is not None, "rank 1 not found among torchrun's workers"
        os.kill(victim, signal.SIGKILL)
        code = agent.wait(timeout=600)
    finally:
        stop_all([agent])
    log = (tmp_path / "restarted.log").read_text()
    assert code == 0, f"seed {seed}\n{log[-3000:]}"
    assert "--resume: no readable checkpoint in" in log  # the first attempt started from scratch
    assert f"resumed from {folder}" in log, f"seed {seed}: the restarted attempt did not resume\n{log[-3000:]}"
    assert_same_weights(run_dir / "model_final.pth", tmp_path / "straight" / "model_final.pth")


@pytest.mark.parametrize("tool", TOOLS)
def test_batch_not_divisible_by_world_size_is_a_config_error(tool, tmp_path, tmp_path_factory):
    data_root = tmp_path / "datasets"
    key = "solver.batch_size" if tool == "pretrain.py" else "solver.ims_per_batch"
    args = tool_args(tool, tmp_path / "run", f"{key}=3", data_root=data_root)
    done = subprocess.run(torchrun_cmd(tool, args), env=tool_env(data_root), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("config error: ") == 2, done.stderr[-3000:]  # one per process
    assert f"'{key}'" in done.stderr and "world size" in done.stderr
    assert not (tmp_path / "run").exists() and not data_root.exists()
