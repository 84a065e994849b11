import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from backbones.utils import dist as rd


def test_single_process_defaults(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = rd.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.backend) == (0, 1, True, None)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(rd.all_reduce_sum(t), torch.tensor([1.0, 2.0]))
    assert rd.all_gather_objects("x") == ["x"] and rd.broadcast_object(3) == 3


def test_batch_split_and_lr_rule():
    assert rd.per_process_batch(256, 8) == 32
    with pytest.raises(ValueError, match=r"solver.batch_size=10 .*not divisible by the world size 4"):
        rd.per_process_batch(10, 4, key="solver.batch_size")
    with pytest.raises(ValueError, match="must be >= 1"):
        rd.per_process_batch(0, 1)
    assert rd.linear_scaled_lr(0.1, 512, 256) == pytest.approx(0.2)
    assert rd.linear_scaled_lr(0.1, 128, 128) == pytest.approx(0.1)


def test_bad_env_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        rd.init_distributed("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out):
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = rd.init_distributed("cpu", timeout_s=60)
    total = rd.all_reduce_sum(torch.tensor([float(rank + 1)]))
    gathered = rd.all_gather_objects(rank * 10)
    shared = rd.broadcast_object("from0" if rank == 0 else "other")
    out[rank] = (info.backend, info.world_size, float(total), gathered, shared)
    rd.cleanup()


def test_two_process_gloo_collectives():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        assert results[rank] == ("gloo", 2, 3.0, [0, 10], "from0")
