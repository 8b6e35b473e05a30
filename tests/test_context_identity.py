"""Context identity is deterministic: the same loader and options give the same
key in separate processes, and any change gives a new one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from faas import ctx_function

SCRIPT = textwrap.dedent("""
    from faas import ctx_function

    def load(size):
        return [0] * size

    @ctx_function(model=load, size={size})
    def f(ctx, x):
        return x

    @ctx_function(model="HuggingFaceTB/SmolLM2-135M-Instruct")
    def g(ctx, x):
        return x

    print(f.context_key, g.context_key)
""")


def _keys(size: int) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(size=size)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_same_declaration_same_key_across_processes():
    a, b, c = _keys(3), _keys(3), _keys(4)
    assert a == b
    assert c[0] != a[0] and c[1] == a[1]


def test_loader_body_changes_the_key():
    def load_a():
        return 1

    def load_b():
        return 2

    load_b.__name__ = load_b.__qualname__ = load_a.__qualname__
    assert ctx_function(model=load_a)(lambda c: c).context_key != ctx_function(model=load_b)(lambda c: c).context_key
