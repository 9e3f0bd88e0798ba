"""The interpreter a supervisor's workers run in, started as the supervisor's was.

A worker is a fresh ``python -m rsasgi``. Started bare, it would drop the options the
supervisor's interpreter was given (``-O``, ``-X dev``, ``-W error``, ``-I``...), and
``-m`` would put the current directory first on ``sys.path`` where the ``rsasgi``
command has its script's directory: the app would import and run one way without
workers and ``--check-config``, another way with them. The supervisor hands both down
(src/supervisor/interpreter.rs).
"""

from __future__ import annotations

import io
import sys

#: sys.flags that a letter on the command line sets, once per count (-OO, -vv).
_FLAG_LETTERS = {
    "optimize": "O",
    "debug": "d",
    "dont_write_bytecode": "B",
    "no_site": "S",
    "verbose": "v",
    "bytes_warning": "b",
    "quiet": "q",
}


def options() -> list[str]:
    """This interpreter's command-line options, as words for a new one.

    What ``subprocess._args_from_interpreter_flags()`` gives the processes Python's
    ``multiprocessing`` spawns, read the same way from ``sys.flags``, ``sys.warnoptions``
    and ``sys._xoptions``; with every ``-X`` option, where that one knows a few, and
    ``-u``. Not imported from there: ``subprocess`` and what it imports would be 1.7 MiB
    more in a supervisor that imports nothing else.
    """
    flags = sys.flags
    words = [
        "-" + letter * getattr(flags, name)
        for name, letter in _FLAG_LETTERS.items()
        if getattr(flags, name) > 0
    ]
    if flags.isolated:
        words.append("-I")  # which is -E, -s and -P in one
    else:
        switches = {
            "-E": flags.ignore_environment,
            "-s": flags.no_user_site,
            "-P": getattr(flags, "safe_path", False),
        }
        words += [word for word, on in switches.items() if on]
    # -b and -X dev add warning filters of their own, which they add again in a worker.
    warnoptions = list(sys.warnoptions)
    implied = ["default"] if flags.dev_mode else []
    if flags.bytes_warning:
        implied.append(("default", "error")[flags.bytes_warning > 1] + "::BytesWarning")
    for option in implied:
        if option in warnoptions:
            warnoptions.remove(option)
    words += [f"-W{option}" for option in warnoptions]
    # -X dev from sys.flags: PYTHONDEVMODE sets it too, and it is not in sys._xoptions then.
    xoptions = {**sys._xoptions, "dev": True} if flags.dev_mode else sys._xoptions
    for name, value in xoptions.items():
        words += ["-X", name if value is True else f"{name}={value}"]
    if _unbuffered():
        words.append("-u")
    return words


def path_entry() -> str | None:
    """The entry Python put first on ``sys.path`` for the program it runs (the
    ``rsasgi`` script's directory; the current directory for ``-m``), or None when it
    puts none (``-I``, ``-P``, ``PYTHONSAFEPATH``)."""
    return sys.path[0] if _puts_path_entry() and sys.path else None


def adopt_path_entry(entry: str) -> None:
    """In a worker, before anything is imported from ``sys.path``: puts its supervisor's
    ``path_entry()`` in place of the one ``-m`` put there, the current directory."""
    # Started with the supervisor's options and environment, the worker puts an entry
    # there exactly when the supervisor did, which is when it has one to hand down.
    if _puts_path_entry() and sys.path:
        sys.path[0] = entry


def _puts_path_entry() -> bool:
    # -P (and PYTHONSAFEPATH) came with 3.11, where -I implies it; in 3.10 only -I.
    return not (sys.flags.isolated or getattr(sys.flags, "safe_path", False))


def _unbuffered() -> bool:
    # -u leaves no trace in sys.flags: it shows in the standard streams Python opened,
    # unbuffered (a bare FileIO under the text layer) instead of a BufferedWriter.
    # PYTHONUNBUFFERED does the same, and reaches the workers anyway.
    return isinstance(getattr(sys.__stdout__, "buffer", None), io.FileIO)
