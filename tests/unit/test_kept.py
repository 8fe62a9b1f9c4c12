"""The bounded map of values used most recently."""

from __future__ import annotations

import pytest

from services.shared.kept import Kept


def test_the_least_recently_used_goes_first() -> None:
    kept: Kept[str, int] = Kept(2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # "b" is now the least recently used
    kept.put("c", 3)
    assert (kept.get("a"), kept.get("b"), kept.get("c"), len(kept)) == (1, None, 3, 2)


def test_a_value_put_again_is_replaced_and_a_dropped_one_is_gone() -> None:
    kept: Kept[str, int] = Kept(2)
    kept.put("a", 1)
    kept.put("a", 2)
    assert (kept.get("a"), len(kept)) == (2, 1)
    kept.drop("a")
    kept.drop("never there")
    assert (kept.get("a"), len(kept)) == (None, 0)


def test_none_kept_keeps_nothing_and_a_negative_size_is_refused() -> None:
    kept: Kept[str, int] = Kept(0)
    kept.put("a", 1)
    assert (kept.get("a"), len(kept)) == (None, 0)
    with pytest.raises(ValueError, match="most"):
        Kept(-1)
