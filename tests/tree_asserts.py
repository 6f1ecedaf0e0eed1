"""One exact comparison of nested parameter / checkpoint trees, shared by the checkpoint tests."""
import numpy as np


def assert_same_tree(a: dict, b: dict, where: str = "") -> None:
    """Assert that b has a's keys and, leaf by leaf, the same dtype and values (arrays) or the
    same type and value (scalars); ``where`` names the path in the message."""
    assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
    for k in a:
        if isinstance(a[k], dict):
            assert_same_tree(a[k], b[k], f"{where}/{k}")
        elif isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{where}/{k} differs"
        else:
            assert type(a[k]) is type(b[k]) and a[k] == b[k], f"{where}/{k}: {a[k]!r} != {b[k]!r}"
