"""User-facing errors: a bad config value, flag, data file or model path stops a script with one clear message.

    from common.errors import ConfigError, DataError, run_main

    raise DataError(f"{path}, row {i}: 'messages' is empty")   # file, row, what is wrong (and the fix)

    if __name__ == "__main__":
        run_main(main)          # exit code 2 and the message, no traceback (--debug or COOKBOOK_DEBUG=1 shows it)

An operating-system error (a missing file, a read-only or full disk, a path through a file) is reported the same
way, as one line naming the path; a closed pipe (``... | head -1``) ends the script quietly. Anything else that
escapes ``main`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class CookbookError(Exception):
    """Base of the errors a user can fix: they name the file / row / key, what is wrong and how to fix it."""


class ConfigError(CookbookError, ValueError):
    """A configuration value or command-line flag that cannot work (unknown key, out of range, bad choice)."""


class DataError(CookbookError, ValueError):
    """A data file that cannot be used: unreadable, malformed, a bad row or image, degenerate splits."""


class ModelPathError(CookbookError, FileNotFoundError):
    """A model or run folder that does not exist, is empty, or holds incomplete / corrupt weights."""


#: Exit code for usage and data errors (the shell convention for "bad usage"); 1 stays for real failures.
USAGE_EXIT_CODE = 2


def run_main(main: Callable[[], object]) -> None:
    """Run a script's ``main()``: a :class:`CookbookError` prints ``error: <message>`` and exits with code 2.

    Pass ``--debug`` (removed from ``sys.argv`` before ``main`` parses it) or set ``COOKBOOK_DEBUG=1`` to get the
    full traceback instead.
    """
    debug = "--debug" in sys.argv[1:] or bool(os.environ.get("COOKBOOK_DEBUG"))
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        main()
    except BrokenPipeError:  # `chat.py ... | head -1`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        sys.exit(1)
    except (CookbookError, OSError) as e:
        if debug:
            raise
        print(f"error: {_describe(e)}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)


def _describe(e: BaseException) -> str:
    """One line for the user: a cookbook error's own message; an operating-system error's path and reason."""
    if isinstance(e, OSError) and not isinstance(e, CookbookError) and e.strerror:
        path = f"{e.filename}: " if e.filename else ""
        hint = {errno.ENOSPC: " (free some disk space, or pass another --output_dir)",
                errno.EACCES: " (pass a folder you can write to)", errno.EROFS: " (pass a writable folder)",
                errno.ENOTDIR: " (a part of this path is a file, not a folder)"}.get(e.errno, "")
        return f"{path}{e.strerror}{hint}"
    return str(e)
