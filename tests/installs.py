"""One test-time install at a time across the suite's worker processes.

The suite runs under pytest-xdist: two workers reaching a missing redis-server or
chromium at once would both run apt-get (and one would fail on dpkg's lock), or
both npm-install into one cache. Each installer takes this lock, then checks
again whether the other worker already installed the thing.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_PATH = os.path.join(tempfile.gettempdir(), "bunws-test-installs.lock")


@contextmanager
def one_at_a_time() -> Iterator[None]:
    """Hold the machine-wide install lock for the duration of the block."""
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
