"""A forked child keeps nothing that belonged to its parent's threads.

``os.fork`` (multiprocessing's ``"fork"`` start method, ``gunicorn --preload``,
Celery's prefork pool) copies the whole memory of the process but only the
thread that forked. The sync path's background event loop, the HTTP clients
of the parent's event loops (whose pooled sockets the child shares with the
parent) and any lock that one of the parent's threads held at that moment
would be dead, shared or held forever in the child. Modules register what a
child must forget with :func:`after_fork_in_child`, and every module-level
lock of the package is renewed in the child.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())

_ORPHANED: list[object] = []
"""What a child inherited from its parent's threads: kept, never used again.

Never collected either: closing or finalizing it in the child (a loop, a
client, their sockets) would act on what the parent still uses.
"""


def after_fork_in_child(reset: Callable[[], None]) -> Callable[[], None]:
    """Run ``reset`` in every child forked from now on (a decorator; no-op without ``fork``)."""
    if hasattr(os, "register_at_fork"):  # not on Windows
        os.register_at_fork(after_in_child=reset)
    return reset


def orphan(value: object) -> None:
    """Keep ``value``, inherited from the parent, out of the child's way (see ``_ORPHANED``)."""
    _ORPHANED.append(value)


@after_fork_in_child
def _renew_module_locks() -> None:
    """Give every module-level lock of the package a new, free lock."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "langchain_moa" or name.startswith("langchain_moa.")):
            continue
        for attribute, value in list(vars(module).items()):
            if isinstance(value, _RLOCK):
                setattr(module, attribute, threading.RLock())
            elif isinstance(value, _LOCK):
                setattr(module, attribute, threading.Lock())
