"""ctx_functions shared by several tests (shipped to workers by value, as a
user's own module would be)."""

from faas import ctx_function


def load_offset(offset):
    return {"offset": offset}


@ctx_function(model=load_offset, offset=1000)
def add_offset(ctx, x):
    if x == 13:
        raise ValueError(f"unlucky {x}")
    return ctx["offset"] + x
