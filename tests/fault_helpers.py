"""Shared pieces of the fault-injection suite (tests/test_faults_*.py): tiny tool runs, in-process or as processes.

Tool runs use the real CLIs (tools/pretrain.py, tools/train_det.py) with settings small enough for a 2-core CPU.
Process runs pin one thread per process so an interrupted and an uninterrupted run compute bit-identically.
"""
import importlib.util
import io
import os
import pickle
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"

# Pretraining: resnet20 on the real digits set, 16x16 inputs, 8 images per step.
PRETRAIN_FLAGS = ["--config", str(REPO / "configs" / "pretrain" / "digits_resnet20.yaml")]
PRETRAIN_TINY = [
    "solver.batch_size=8", "solver.max_iter=12", "solver.steps=[8]", "train.checkpoint_period=2",
    "train.log_period=1", "train.eval_period=0", "train.keep_last=2", "train.progress=false", "train.device=cpu",
    "eval.max_images=16", "data.num_workers=0",
]

# Detection: resnet20 C4 Faster R-CNN from scratch on 8 generated digit canvases of 48x64, no evaluation.
DET_FLAGS = ["--dataset", "digits", "--backbone", "resnet20"]
DET_TINY = [
    "device=cpu", "solver.max_iter=12", "solver.steps=[8]", "solver.ims_per_batch=1", "solver.reference_batch=0",
    "solver.base_lr=0.001", "solver.warmup_iters=0", "solver.checkpoint_period=2", "solver.log_period=1",
    "solver.keep_last=2", "data.digits.num_train=8", "data.digits.num_val=2", "data.digits.canvas=[48,64]",
    "data.digits.digit_size=[12,24]", "data.num_workers=0", "data.test=none", "input.min_size_train=[48]",
    "input.max_size_train=64", "input.min_size_test=48", "input.max_size_test=64",
    "model.rpn.batch_size_per_image=32", "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=50",
    "model.roi_heads.batch_size_per_image=16",
]




def pretrain_args(output_dir: Path, *overrides: str, flags: Sequence[str] = ()) -> List[str]:
    """tools/pretrain.py arguments of the tiny run; later overrides win over earlier ones."""
    return [*PRETRAIN_FLAGS, *flags, "--output-dir", str(output_dir), *PRETRAIN_TINY, *overrides]


def det_args(output_dir: Path, *overrides: str, data_root: Path, flags: Sequence[str] = ()) -> List[str]:
    """tools/train_det.py arguments of the tiny run; later overrides win over earlier ones."""
    return [*DET_FLAGS, "--data-root", str(data_root), *flags, "--output-dir", str(output_dir), *DET_TINY,
            *overrides]


@pytest.fixture
def one_thread():
    """In-process tool runs on one thread: fast on a shared 2-core machine and bit-reproducible between runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_REFERENCE_RUNS: Dict[str, Path] = {}


def reference_run(tool: str, tmp_path_factory) -> Path:
    """The run folder of one uninterrupted in-process tiny run of ``tool``, made once per test session.

    Tests must not change it: copy it (``shutil.copytree``) to fault-inject.
    """
    if tool not in _REFERENCE_RUNS:
        folder = tmp_path_factory.mktemp(f"reference_{Path(tool).stem}") / "run"
        args = tool_args(tool, folder, data_root=shared_data_root(tmp_path_factory))
        torch.set_num_threads(1)
        code, out = run_main(tool, args)
        assert code == 0, out[-3000:]
        _REFERENCE_RUNS[tool] = folder
    return _REFERENCE_RUNS[tool]


_DATA_ROOT: List[Path] = []


def shared_data_root(tmp_path_factory) -> Path:
    """One dataset root per session, so the generated digits set is made once."""
    if not _DATA_ROOT:
        _DATA_ROOT.append(tmp_path_factory.mktemp("datasets"))
    return _DATA_ROOT[0]


TRAINING_TOOLS = ("pretrain.py", "train_det.py")


def tool_args(tool: str, output_dir: Path, *overrides: str, data_root: Path, flags: Sequence[str] = ()) -> List[str]:
    """The tiny run's arguments for either training tool (``data_root`` is used by detection only)."""
    if tool == "pretrain.py":
        return pretrain_args(output_dir, *overrides, flags=flags)
    return det_args(output_dir, *overrides, data_root=data_root, flags=flags)


def checkpoint_folder(tool: str, run_dir: Path) -> Path:
    """Where a tool keeps its periodic checkpoints."""
    return run_dir if tool == "pretrain.py" else run_dir / "checkpoints"


def tool_env(data_root: Path, **extra: str) -> Dict[str, str]:
    """Environment for a tool process: one thread, datasets under ``data_root``, the repo importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONUNBUFFERED="1",
               RESDET_DATASETS=str(data_root), PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def tool_cmd(tool: str, args: Sequence[str]) -> List[str]:
    return [sys.executable, str(TOOLS / tool), *map(str, args)]


def run_tool(tool: str, args: Sequence[str], env: Dict[str, str], timeout: float = 300,
             preexec_fn: Optional[Callable[[], None]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(tool_cmd(tool, args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def start_tool(tool: str, args: Sequence[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    """Start a tool process with stdout+stderr going to ``log`` (a file: a pipe nobody reads could block it)."""
    handle = open(log, "w")
    try:
        return subprocess.Popen(tool_cmd(tool, args), env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    finally:
        handle.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(tool: str, args: Sequence[str], env: Dict[str, str], logs: Path, world_size: int = 2):
    """Start ``world_size`` processes of one job by hand (torchrun's environment, no torchrun agent to clean up)."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(start_tool(tool, args, rank_env, logs / f"rank{rank}.log"))
    return procs


def torchrun_cmd(tool: str, args: Sequence[str], nproc: int = 2, max_restarts: int = 0) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "--max-restarts", str(max_restarts), "--monitor-interval", "0.2", str(TOOLS / tool), *map(str, args)]


def worker_pid(agent_pid: int, rank: int) -> Optional[int]:
    """The pid of torchrun worker ``rank`` among the children of the agent process ``agent_pid`` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if parent == agent_pid and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


def stop_all(procs: Sequence[subprocess.Popen]) -> None:
    """Kill whatever is left of processes this test started (stopped ones included)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: Optional[subprocess.Popen] = None,
             poll: float = 0.02) -> None:
    """Poll ``condition`` until true; fail naming ``what`` on timeout or when ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def logged_iterations(run_dir: Path) -> int:
    """Highest ``iter`` in ``run_dir/metrics.jsonl`` (0 when nothing is logged yet)."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    best = 0
    for line in path.read_text().splitlines():
        try:
            best = max(best, int(json.loads(line).get("iter", 0)))
        except (ValueError, AttributeError):
            pass  # the line being written right now
    return best


_MODULES: Dict[str, object] = {}


def tool_module(tool: str):
    """``tools/<tool>`` imported as a module (tools are scripts, not a package), cached."""
    if tool not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"resdet_tool_{Path(tool).stem}", TOOLS / tool)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[tool] = module
    return _MODULES[tool]


def run_main(tool: str, args: Sequence[str]) -> Tuple[int, str]:
    """Run a tool's ``main`` in this process; returns (exit code, stdout + stderr)."""
    module = tool_module(tool)
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            argv = list(map(str, args))
            if hasattr(module, "get_args_parser"):
                code = module.main(module.get_args_parser().parse_args(argv))
            else:  # tools whose main parses argv itself
                code = module.main(argv)
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, out.getvalue()


def model_state(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    """Every tensor of the two files' ``model`` state dicts is bit-identical."""
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ between {a} and {b}, e.g. {different[:3]}"


def listing(folder: Path) -> Dict[str, bytes]:
    """File name → contents of every file directly in ``folder``."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class _RunsCode:
    """Pickles to a call of ``os.system``: loading it with plain ``pickle``/``torch.load`` would run the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_payload(marker: Path) -> _RunsCode:
    return _RunsCode(f"touch {marker}")


def write_malicious_torch_file(path: Path, marker: Path, **fields) -> Path:
    """A torch.save file shaped like a resdet checkpoint whose unpickling would create ``marker``."""
    torch.save({"format": "resdet", "arch": "resnet20", "model": {"conv1.weight": torch.zeros(1)},
                "payload": malicious_payload(marker), **fields}, path)
    return path


def write_malicious_pickle(path: Path, marker: Path) -> Path:
    """A plain ``.pkl`` weights file (detectron2/MSRA style) whose unpickling would create ``marker``."""
    path.write_bytes(pickle.dumps({"model": {"conv1.weight": malicious_payload(marker)}}, protocol=2))
    return path
