"""A model file that fails while being imported, before any function is called."""

import smpack_no_such_helper  # noqa: F401


def model_fn(ctx):
    return None
