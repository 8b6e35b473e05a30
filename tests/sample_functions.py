"""ctx_functions shared by several tests (shipped to workers by value, as a
user's own module would be)."""

import pytest

from faas import ctx_function
from faas.errors import RemoteTraceback


def load_offset(offset):
    return {"offset": offset}


@ctx_function(model=load_offset, offset=1000)
def add_offset(ctx, x):
    if x == 13:
        raise ValueError(f"unlucky {x}")
    return ctx["offset"] + x


def check_add_offset_results(futures):
    """futures[x] = add_offset(x): the values, and number 13's remote traceback."""
    for x, fut in enumerate(futures):
        if x == 13:
            with pytest.raises(ValueError, match="unlucky 13") as info:
                fut.result(timeout=60)
            cause = info.value.__cause__
            assert isinstance(cause, RemoteTraceback)
            assert "add_offset" in cause.tb and 'raise ValueError(f"unlucky {x}")' in cause.tb
        else:
            assert fut.result(timeout=60) == 1000 + x
