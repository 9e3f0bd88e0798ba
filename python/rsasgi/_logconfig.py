"""``--log-config FILE``: Python's ``logging.config`` in every rsasgi process.

The file is read as uvicorn reads it: ``.json`` and ``.yaml``/``.yml`` files hold a
``dictConfig`` dictionary (YAML needs PyYAML), any other file is an INI file for
``fileConfig``. Loggers the file does not name keep working (``disable_existing_loggers``
is false unless the file says otherwise), rsasgi's own among them: those the file leaves
without a level take ``--log-level``'s, and those left with no handler write to stderr.

rsasgi's own lines (``rsasgi.error``, ``rsasgi.access``, ``wsgi.errors``) are then made into
``logging`` records and handed to the configured handlers by one thread, ``rsasgi-log``, which
takes them from a queue the Rust side fills: the reactor never waits for the GIL or for a
handler. An access record carries the line's fields as attributes (``method``, ``path``,
``status``, ``bytes``, ``duration``, ``client``, ``request_id``…) for formatters to use.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import threading
import traceback

from rsasgi._rsasgi import log_records_finished, next_log_records

#: Python's numbers for tracing's levels, TRACE first.
LEVELS = (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)

#: What a LogRecord already has: an event field by one of these names is left out rather
#: than overwrite it (makeRecord refuses "message" and "asctime" outright).
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


#: The fields of access records: a record that lacks one (no query string, a WebSocket's
#: closing line with no status) has it as None, so one format serves them all.
ACCESS_FIELDS = dict.fromkeys(
    (
        "method",
        "path",
        "query",
        "status",
        "bytes",
        "duration",
        "client",
        "protocol",
        "user_agent",
        "referer",
        "request_id",
        "incomplete",
        "close_code",
        "closed_by",
    )
)


class LogConfigError(Exception):
    """The file cannot be read or applied; the message says why, in one line."""


#: The loggers rsasgi's lines go to.
LOGGERS = ("rsasgi.error", "rsasgi.access", "wsgi.errors")


def configure(path: str, level: int = logging.INFO) -> None:
    """Applies the logging configuration in `path`, then keeps rsasgi's loggers working where
    the file leaves them be: `level` is ``--log-level``, as Python's number."""
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as file:
                logging.config.dictConfig(_with_defaults(json.load(file)))
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise LogConfigError(
                    "a YAML log config needs PyYAML: pip install pyyaml (or use JSON or INI)"
                ) from None
            with open(path, encoding="utf-8") as file:
                logging.config.dictConfig(_with_defaults(yaml.safe_load(file)))
        else:
            with open(path, encoding="utf-8") as file:
                logging.config.fileConfig(file, disable_existing_loggers=False)
    except LogConfigError:
        raise
    except Exception as exc:  # every failure is one line for the operator
        raise LogConfigError(_describe(exc)) from None
    _keep_rsasgi_loggers_working(level)


#: rsasgi's loggers and their parents, as the file may name them.
_FAMILY = frozenset(("rsasgi", "wsgi", *LOGGERS))

#: Those of `_FAMILY` the file configured: where one of them stops its records on their way
#: to root (``propagate: false``) without a handler, the file silenced them on purpose.
_configured: frozenset[str] = frozenset()

#: Where a line of rsasgi's that meets no handler goes, once a file is applied.
_fallback: logging.Handler | None = None


def _keep_rsasgi_loggers_working(level: int) -> None:
    """A file that names only some loggers (the README's, which names only ``rsasgi.access``)
    would otherwise silence the others: a logger without a level takes root's (WARNING unless
    the file sets it), which dropped every access line and "Listening on", and a record that
    meets no handler on its way to root goes to Python's last resort, which writes WARNING
    and above only. Levels and handlers the file gives are left as they are."""
    global _configured, _fallback
    # Nothing of rsasgi's made these loggers before the file was applied: those that exist,
    # it named.
    _configured = frozenset(
        name
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name in _FAMILY and isinstance(logger, logging.Logger)
    )
    # On the parent, so that a file setting "rsasgi" alone still governs both children.
    # The children are left unmade until their first line: an app's logging configuration
    # at import (Django's LOGGING, whose disable_existing_loggers is true by default)
    # disables the loggers that exist when it runs.
    parent = logging.getLogger("rsasgi")
    if parent.level == logging.NOTSET:
        parent.setLevel(level)
    _fallback = logging.StreamHandler(sys.stderr)
    _fallback.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s")
    )


def _reaches_a_handler(logger: logging.Logger) -> bool:
    """Whether a record of `logger` meets a handler on its way to root, or a logger of ours
    the file made a dead end of (its silence is the file's choice). Asked at each record: the
    app may add handlers when it is imported (``logging.basicConfig``), after the file."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.handlers:
            return True
        if not current.propagate:
            return current.name in _configured
        current = current.parent
    return False


def _with_defaults(config) -> dict:
    if not isinstance(config, dict):
        raise LogConfigError(f"the file holds a {type(config).__name__}, not a dictConfig mapping")
    config.setdefault("disable_existing_loggers", False)
    return config


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # dictConfig wraps the real cause: "Unable to configure handler 'x'" from ... .
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {' '.join(str(cause).split())}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reopen() -> tuple[list[str], list[str]]:
    """SIGUSR1: opens every file handler's file again at its path (logrotate moved it away),
    as gunicorn does. Returns the files reopened, and those that failed with the reason."""
    reopened: list[str] = []
    failed: list[str] = []
    handlers = {
        id(handler): handler
        for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values())
        for handler in getattr(logger, "handlers", ())
        if isinstance(handler, logging.FileHandler)
    }
    for handler in handlers.values():
        handler.acquire()
        try:
            if handler.stream is None:
                continue  # delay=True and nothing written yet: opened at the first record
            try:
                stream = handler._open()
            except OSError as exc:
                failed.append(f"{handler.baseFilename}: {exc.strerror or exc}")
                continue
            old, handler.stream = handler.stream, stream
            try:
                old.close()
            except OSError:
                pass
            reopened.append(handler.baseFilename)
        finally:
            handler.release()
    return reopened, failed


def start() -> threading.Thread:
    """Starts the thread that hands rsasgi's lines to the configured handlers."""
    thread = threading.Thread(target=_pump, name="rsasgi-log", daemon=True)
    thread.start()
    return thread


def _pump() -> None:
    while (batch := next_log_records()) is not None:
        for created, level, name, message, fields in batch:
            try:
                _emit(created, LEVELS[level], name, message, fields)
            except Exception:  # a broken filter must not stop the lines after it
                traceback.print_exc(file=sys.stderr)
    # The process is about to leave (with os._exit in a worker): flush what handlers hold.
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            try:
                handler.flush()
            except Exception:  # a closed stream: nothing more to do
                pass
    log_records_finished()


def _emit(created: float, level: int, name: str, message: str, fields) -> None:
    logger = logging.getLogger(name)
    if logger.disabled:
        # An app's logging configuration disabled it (Django's LOGGING, whose
        # disable_existing_loggers is true by default, disables the loggers the file made):
        # these are the server's lines, which the file asked for, not the app's.
        logger.disabled = False
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(name, level, "(rsasgi)", 0, message, (), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.threadName = "rsasgi"
    if name == "rsasgi.access":
        record.__dict__.update(ACCESS_FIELDS)
    for key, value in fields:
        if key not in _RESERVED:
            setattr(record, key, value)
    if _fallback is not None and not _reaches_a_handler(logger):
        # Python's last resort would write WARNING and above only, without a time.
        if logger.filter(record):
            _fallback.handle(record)
        return
    logger.handle(record)
