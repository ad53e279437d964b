"""memmanager.cuda: is an NVIDIA GPU usable, and how many are there?

The CUDA driver (``libcuda.so.1``, or the library named by the environment
variable ``MEMMANAGER_CUDA_LIBRARY``) is loaded by the C core the first time
a GPU feature is used: one of these functions, ``Buffer.device_movement``,
``Buffer.device_view``, or a ``CudaHost``/``CudaDevice``/``CudaManaged``
allocation.  Importing memmanager never loads it.  A failed load is not
retried; its reason is what every ``DeviceUnavailableError`` says.
"""

from typing import Optional as _Optional

from . import _core
from ._core import DeviceUnavailableError, DeviceView

__all__ = [
    "DeviceUnavailableError",
    "DeviceView",
    "device_count",
    "driver_version",
    "is_available",
    "unavailable_reason",
]


def is_available() -> bool:
    """True when the CUDA driver loaded and reports at least one GPU."""
    return _core._cuda_probe()[0] > 0


def device_count() -> int:
    """The number of GPUs the driver reports; 0 when none is usable."""
    return _core._cuda_probe()[0]


def unavailable_reason() -> _Optional[str]:
    """Why no GPU is usable, in the loader's words; None when one is."""
    return _core._cuda_probe()[1]


def driver_version() -> _Optional[int]:
    """The CUDA driver's version (e.g. 12040 for 12.4); None without a GPU."""
    return _core._cuda_probe()[3]
