"""Where a stage computes: a device chosen by name, and random draws that do not depend on it.

The training stages (pretraining, the supervised controllers, the metacontroller, RL) take `--device`:
`auto` (the default) picks the first CUDA GPU when this PyTorch build sees one, else the CPU. Data,
environments and checkpoints stay on the CPU; only the models and their batches move. Random draws come
from explicit CPU generators and are moved to the device, so a seed gives the same draws on every device;
what a model computes from them differs between devices by floating-point rounding, and by bfloat16
matmuls where a preset asks for them and only one of the devices has them.
"""

import torch
from torch import Tensor, nn

from internal_rl.common.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch.device for `name`; ConfigError for a device this machine's PyTorch cannot use."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"device {name!r} is not supported; valid: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this PyTorch sees no CUDA GPU (a CPU build, or no GPU); use --device cpu")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """A name for results files: 'cpu' or e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s parameters (the CPU for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def standard_normal(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) noise of `shape`, drawn on the CPU from `generator` (the global CPU generator if None), with
    the dtype and device of `like`."""
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def set_cpu_threads(threads: int) -> None:
    """Use `threads` torch intra-op threads on the CPU for the rest of the process. On a shared 2-core
    machine two threads stall each other as soon as another process takes a core, while one does not
    (benchmarks/bench_load.py)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
