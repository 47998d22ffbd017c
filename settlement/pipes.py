"""Command-line output into a pipe whose reader went away (``settlement alerts list | head``)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

#: What a shell reports for a command killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def quiet_broken_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a console script's ``main`` so that a reader closing its output early ends it
    with :data:`EXIT_BROKEN_PIPE` and no traceback, as ``head`` expects of any command.

    Python ignores SIGPIPE, so the write raises :class:`BrokenPipeError`; stdout is then
    pointed at ``/dev/null`` because the interpreter flushes it once more at exit."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_BROKEN_PIPE

    return run
