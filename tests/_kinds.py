"""Asserting a refusal: the exception class, and for an engine ``ValueError`` its kind."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import tunoffload as t

# What a refusal case expects: an engine error kind (a ``ValueError`` whose ``kind`` is
# that name) or an exception class (a ``TypeError`` for a wrong type, say).
Want = str | type[BaseException]


def refused(call: Callable[[], Any], want: Want, match: str | None = None) -> BaseException:
    """Runs ``call``, which must raise as ``want`` says (``match``: a regex searched for
    in the message, without the notes Python adds); returns the exception."""
    if isinstance(want, str):
        assert want in t.ERROR_KINDS, f"{want!r} is not in tunoffload.ERROR_KINDS"
        with pytest.raises(ValueError) as ei:
            call()
        kind = getattr(ei.value, "kind", None)
        assert kind == want, f"kind {kind!r}, want {want!r}: {ei.value}"
    else:
        with pytest.raises(want) as ei:
            call()
    msg = str(ei.value)
    assert msg, "the exception should name the problem"
    if match is not None:
        assert re.search(match, msg), f"{msg!r} does not match {match!r}"
    return ei.value
