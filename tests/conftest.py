"""Fixtures shared by the gateware and board tests."""

import gc
import re
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable


def _rejects(exc_type, message, build, *args, **kwargs):
    """Assert ``build(*args, **kwargs)`` raises ``exc_type`` with exactly ``message``.

    A component whose constructor raises still exists for a moment; Amaranth warns that
    it was never elaborated when it is collected, so collect it here, warnings muted.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(exc_type, match=f"^{re.escape(message)}$"):
            build(*args, **kwargs)
        gc.collect()


@pytest.fixture
def rejects():
    """``rejects(ValueError, "exact message", Component, *args)``."""
    return _rejects
