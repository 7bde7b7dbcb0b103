"""The `smpack` command's entry point (and `python -m smpack`'s): it starts the command
again first if it will verify.

A verified build or `smpack verify` forks verify's graph server from its own process once it
has imported TensorFlow (`graph_process.fork_server_at_import`), and the graph processes
restore into memory of the malloc they inherit, which asks for huge pages only if the
process started with glibc's tunable. So such a command starts itself again with it, here,
before the command line's own imports (Typer, Rich and smpack's: 0.5-0.7 s again if done
after them). The command is told from its arguments alone: a guess that misses costs a
start of the interpreter, or a server started apart instead of forked, never a check.
"""

import sys


def _verifies(arguments: list[str]) -> bool:
    command = arguments[0] if arguments else ""
    return command == "verify" or (command == "build" and "--no-verify" not in arguments)


def main() -> None:
    if _verifies(sys.argv[1:]):
        from smpack.checks.graph_process import restart_with_huge_pages

        restart_with_huge_pages()
    from smpack.cli.commands import main as run_command

    run_command()
