"""Which low-precision math a device runs natively (shared by the pretraining and detection stages)."""
import torch


def bf16_supported(device) -> bool:
    """Whether bf16 matrix math is native here (CUDA compute capability >= 8, or a CPU with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(amp: str, device) -> "torch.dtype | None":
    """The autocast dtype for an ``amp`` setting (none | bf16 | fp16) on ``device``: as asked on CUDA; on the CPU only
    bf16, and only with native bf16 matrix math (emulated bf16 and CPU fp16 are slower than float32), else None."""
    dtype = AMP_DTYPES[amp]
    if torch.device(device).type == "cpu" and dtype is not None:
        return dtype if dtype is torch.bfloat16 and bf16_supported(device) else None
    return dtype
