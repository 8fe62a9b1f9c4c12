"""Page sizes and page tokens, the same for every List RPC."""

from __future__ import annotations

import pytest

from services.shared import paging
from services.shared.errors import InvalidArgument


@pytest.mark.parametrize(("requested", "served"), [
    (0, paging.DEFAULT_PAGE_SIZE), (1, 1), (200, 200), (201, 200), (2**31 - 1, 200),
])
def test_a_page_size_above_the_maximum_is_the_maximum(requested: int, served: int) -> None:
    assert paging.page_size(requested) == served


def test_a_negative_page_size_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as refused:
        paging.page_size(-1)
    assert [v.field for v in refused.value.violations] == ["page_size"]
