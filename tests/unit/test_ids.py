"""Random ids from a buffer of the kernel's bytes: version 4, never the same twice,
not in threads and not across a fork."""

from __future__ import annotations

import os
import threading
import uuid

from services.shared import ids


def test_an_id_is_a_random_uuid_of_version_4_and_the_rfc_variant() -> None:
    made = [ids.uuid4() for _ in range(3 * ids.BUFFER // 16)]  # across refills
    assert all(found.version == 4 for found in made)
    assert all(found.variant == uuid.RFC_4122 for found in made)
    assert len(set(made)) == len(made)
    # Every one of the 122 random bits varies.
    ones = [sum((found.int >> bit) & 1 for found in made) for bit in range(128)]
    fixed = {bit for bit in range(128) if ones[bit] in (0, len(made))}
    assert fixed == {76, 77, 78, 79, 62, 63}, fixed  # the version's and the variant's


def test_threads_making_ids_at_once_never_take_the_same_bytes() -> None:
    made: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(len(made))

    def make(into: list[uuid.UUID]) -> None:
        start.wait()
        into.extend(ids.uuid4() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [found for into in made for found in into]
    assert len(set(every)) == len(every) == 40_000


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    ids.uuid4()  # the buffer holds bytes not yet handed out
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(reader)
            os.write(writer, b"".join(ids.uuid4().bytes for _ in range(4)))
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        theirs = pipe.read()
    os.waitpid(child, 0)
    assert len(theirs) == 64
    ours = b"".join(ids.uuid4().bytes for _ in range(4))
    assert {theirs[i:i + 16] for i in range(0, 64, 16)}.isdisjoint(
        {ours[i:i + 16] for i in range(0, 64, 16)})
