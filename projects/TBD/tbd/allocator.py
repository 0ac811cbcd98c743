"""
Keep freed memory in the process for reuse (glibc malloc on Linux, CPU training).

A detection training step on the CPU allocates and frees gigabytes of activations and gradients.
With glibc's default settings every block above the mmap threshold (at most 32 MB) is a fresh
``mmap`` that ``free`` unmaps, and the top of the heap is given back to the system as soon as it
holds more than the trim threshold. The next step asks for the same sizes again, and the kernel
must map and zero every page anew: at the COCO scale that is millions of page faults and several
CPU-seconds of system time per step (docs/cost.md, "The allocator"). Serving large blocks from the
heap and never trimming it lets the next step reuse the same pages.
"""

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """
    Make glibc's malloc keep freed memory for reuse, for the rest of the process (and of the
    processes it forks): ``mallopt(M_MMAP_MAX, 0)`` serves every block from the heap, and
    ``mallopt(M_TRIM_THRESHOLD, -1)`` never gives the heap's top back (man 3 mallopt).
    ``malloc_trim`` still releases free memory when called explicitly.

    Returns:
        True when applied; False where the C library is not glibc (macOS, Windows, musl), which is
        left as it is.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1)):
        logger.warning("mallopt refused M_MMAP_MAX or M_TRIM_THRESHOLD; freed memory is not kept")
        return False
    return True


def configure_malloc(device: str, keep: bool = True) -> bool:
    """
    Set up malloc for work on ``device`` the way training does: on the CPU, unless ``keep`` is
    False, :func:`keep_freed_memory`; elsewhere (CUDA has its own caching allocator) nothing.

    Returns:
        whether freed memory is now kept.
    """
    if device != "cpu" or not keep:
        return False
    return keep_freed_memory()
