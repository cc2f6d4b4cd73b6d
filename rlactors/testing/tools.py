"""A tool for tests of the multi-turn loop (type hints and a Google-style docstring, as tools need)."""


def multiply(a: int, b: int) -> int:
    """Multiplies two integers.

    Args:
        a: the first integer
        b: the second integer
    """
    return a * b
