"""Random ids (UUID version 4) without a system call each.

`uuid.uuid4()` asks the kernel for 16 bytes every time: a system call, made for
every write a service serves (the new row's id, the request id of a call that
brought none), and system calls are dear on the virtual machines this runs on.
`uuid4()` here takes its 16 bytes from a buffer filled by `os.urandom` 4 KiB at a
time: the same source, read in bulk, so the ids are exactly as unpredictable.

The buffer is taken under a lock (a thread that made ids beside the event loop's
would otherwise risk taking the same bytes), and a child process made by fork
starts with an empty buffer, never its parent's bytes.
"""

from __future__ import annotations

import os
import threading
import uuid

# Bytes read from the kernel at once: 256 ids.
BUFFER = 4096


class _Random:
    """Bytes of `os.urandom`, handed out once each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            at = self._at
            if at + count > len(self._bytes):
                self._bytes, at = os.urandom(max(BUFFER, count)), 0
            self._at = at + count
            return self._bytes[at:at + count]

    def forget(self) -> None:
        """Drop what is left (in a child made by fork: its parent hands those out)."""
        self._bytes, self._at = b"", 0
        self._lock = threading.Lock()


_random = _Random()
os.register_at_fork(after_in_child=_random.forget)


def uuid4() -> uuid.UUID:
    """A random UUID (version 4), as `uuid.uuid4()`."""
    return uuid.UUID(bytes=_random.take(16), version=4)
