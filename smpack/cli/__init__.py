"""The `smpack` command: parses options, calls the public API (`smpack`), renders with Rich."""

from smpack.cli.commands import app, main

__all__ = ["app", "main"]
