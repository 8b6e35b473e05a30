"""A script with nothing started beforehand: Executor() brings its own endpoint,
and stops it on exit. Usage: embedded.py FAAS_HOME"""

import os
import sys

os.environ["FAAS_HOME"] = sys.argv[1]

from faas import Executor, ctx_function  # noqa: E402


@ctx_function(model=lambda base: {"base": base}, base=1000)
def add(ctx, x):
    return ctx["base"] + x


with Executor() as ex:
    home = ex._embedded.home
    print(",".join(map(str, ex.map(add, range(3)))))
assert not home.exists(), "embedded endpoint left its folder behind"
print("ok")
