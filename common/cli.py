"""The one ``main`` every command runs through: parsing, logging, and one exit-code convention.

A command is two steps. ``prepare`` turns the parsed flags into what the command needs (config objects,
files read, combinations checked); whatever goes wrong there is the user's to fix: exit 2, like argparse's
own usage errors. ``run`` does the work; what goes wrong there is a runtime failure: exit 1. Every error is
one line on standard error, ``<prog>: error: <what>``, never a traceback.

===  =======================================================================
 0   done
 1   runtime error (a broker that went away, a session that failed)
 2   usage or configuration error (flags, environment, config file, input files)
 3+  command-specific (``fl-node``: 3 = stopped after ``--max-idle``)
130  stopped by SIGINT/SIGTERM (Ctrl-C)
===  =======================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from common.config import setup_logging
from common.config_file import config_template, log_settings, parse_with_config

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RUNTIME_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, TimeoutError)

logger = logging.getLogger(__name__)
Prepared = TypeVar("Prepared")
Result = TypeVar("Result")


class UsageError(ValueError):
    """A setting, a combination of settings or an input file that cannot work: exit 2 wherever it is raised."""


def command_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    prepare: Callable[[argparse.Namespace], Prepared],
    run: Callable[[Prepared], int | None],
    config_section: str | None = None,
    usage_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv`` (with ``--config`` and ``--print-config`` when ``config_section`` is given), set up logging,
    then ``run(prepare(args))``; returns the exit code (see the module docstring)."""
    if config_section is not None:
        args, sources = parse_with_config(parser, argv, section=config_section)
        if args.print_config:
            sys.stdout.write(config_template(parser, config_section))
            return EXIT_OK
    else:
        args, sources = parser.parse_args(argv), {}
    setup_logging(args.log_level, args.quiet)
    log_settings(args, sources)
    prog = parser.prog
    usage: tuple[type[BaseException], ...] = (UsageError, *usage_errors)
    try:
        prepared = prepare(args)
    except usage + RUNTIME_ERRORS as exc:
        return report(prog, exc, EXIT_USAGE)
    try:
        code = run(prepared)
    except usage as exc:
        return report(prog, exc, EXIT_USAGE)
    except (KeyboardInterrupt, asyncio.CancelledError):
        logger.warning("%s stopped by signal", prog)
        return EXIT_INTERRUPTED
    except RUNTIME_ERRORS as exc:
        return report(prog, exc, EXIT_RUNTIME)
    return EXIT_OK if code is None else code


def report(prog: str, exc: BaseException, code: int) -> int:
    sys.stderr.write(f"{prog}: error: {exc}\n")
    return code


def run_until_signal(main: Callable[[], Awaitable[Result]]) -> Result:
    """``asyncio.run(main())`` where SIGINT and SIGTERM cancel the main task (a clean shutdown through its
    ``finally`` blocks); the cancellation then reaches ``command_main`` as ``CancelledError`` (exit 130)."""

    async def guarded() -> Result:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await main()

    return asyncio.run(guarded())
