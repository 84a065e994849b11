"""Read ``.pkl`` weight files (detectron2, Detectron/MSRA caffe2) without ever running code from them.

A pickle can name any importable callable and call it while loading; the unpickler below resolves only the handful
of globals needed to rebuild numpy arrays and plain containers, and refuses everything else before it is called.
"""
import collections
import io
import pickle
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (it could run code when loaded)."""


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    # Take the objects from numpy itself rather than importing them by name: numpy 2 moved numpy.core to
    # numpy._core, and files written by numpy 1 (or Python 2) still carry the old module names.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float32(0).__reduce__()[0]
    try:
        from numpy._core.numeric import _frombuffer  # protocol-5 arrays (numpy >= 2)
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.numeric import _frombuffer
    import _codecs

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED = _allowed_globals()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array and container globals; ``source`` names the file in errors."""

    def __init__(self, file, source: str = "pickle", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            f"{self.source}: refused to load global '{module}.{name}'; weight pickles may only hold numpy arrays "
            "and plain containers (dict/list/tuple/str/numbers). This file could run code when unpickled; "
            "if you trust it, convert it to a state dict of tensors yourself."
        )


def load_pickle(path: Union[str, Path]) -> Any:
    """Load a weights ``.pkl`` file with the restricted unpickler (latin1 decodes Python 2 caffe2 pickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=str(path), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated file, not a pickle, ...
        raise pickle.UnpicklingError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from e
