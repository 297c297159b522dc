"""Child processes that must not outlive the process that started them.

A killed parent used to leave its children running: a reward worker (~300 MB each) per killed trainer, and the
`kelvin compare --jobs` workers, which kept training and writing into run folders that a restarted comparison was
resuming at the same time.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), then check that the parent did not
    die before the request took effect. Called first thing in the child; `parent_pid` is the parent's os.getpid().

    The kernel sends the signal when the *thread* that started this process ends, not the whole parent: callers start
    their children from a thread that lives as long as the children should (the main thread, or one that outlives
    them). SIGKILL, not SIGTERM: a child must stop at once, whatever handler it or a library installed. Elsewhere than
    Linux this does nothing, and the caller needs another way to notice (the reward worker sees EOF on its pipe)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)
