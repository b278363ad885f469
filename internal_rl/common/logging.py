"""Progress bars and TensorBoard scalars for long loops."""

from pathlib import Path
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", disable: bool = False) -> tqdm:
    """A progress bar on stderr; pass `disable=True` in tests or library calls that must stay quiet."""
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


class ScalarLogger:
    """TensorBoard scalars under `logdir`; a no-op when `logdir` is None."""

    def __init__(self, logdir: Path | None):
        self._writer = None
        if logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(logdir))

    def log(self, step: int, **scalars: float) -> None:
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
