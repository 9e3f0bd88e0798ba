"""One worker's lifetime, driven from Python around the Rust ``Worker``.

Loads the app, runs the lifespan protocol, starts the reactor, serves until
SIGINT/SIGTERM, then shuts down gracefully (at once on a second signal). The
per-request hot path (scope building, ``receive``/``send``) lives in Rust; this
module only wraps each request in a task, held until it ends, that reports how
the app ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import importlib
import inspect
import os
import signal
import sys
import threading
import time
import traceback

# The bounded steps of a stop after its grace period, in seconds, defined in
# src/worker.rs, where a supervisor's deadline for a stopping worker is made of them, and
# how long a stop signal may go unanswered while the app blocks Python.
from rsasgi._rsasgi import (
    BLOCKED_STOP_WAIT,
    CANCELLED_TASKS_WAIT,
    LIFESPAN_SHUTDOWN_ALLOWANCE,
    REQUEST_TASKS_WAIT,
    STOP_AFTER_GRACE,
    WSGI_THREADS_WAIT,
    flush_logs,
    log,
)

#: How long a forced stop waits for WSGI threads that run no request: told to leave,
#: idle ones are gone in a few milliseconds, and judged at once they were reported as
#: threads stuck in the app.
IDLE_WSGI_THREADS_WAIT = 0.2

#: Exit code when the app cannot be loaded or its lifespan startup fails (as
#: gunicorn and uvicorn use), or a supervised worker cannot start serving: a
#: supervisor stops instead of restarting it.
EXIT_BOOT_FAILURE = 3

#: The signal a supervisor sends a worker whose event loop is stuck, to have
#: it write the Python stack of every thread before it is killed.
STACK_DUMP_SIGNAL = signal.SIGUSR2

#: The name of every request's asyncio task (what `Task.get_name()` returns
#: and asyncio's debug output shows).
REQUEST_TASK_NAME = "rsasgi.request"


class AppLoadError(Exception):
    """The APP argument does not name a usable application."""


class _StopWhileLoading(BaseException):
    """Raised by a stop signal other than SIGINT while one process imports the app, as
    SIGINT raises KeyboardInterrupt; ``args[0]`` is the signal."""


def _stop_loading(signum: int, _frame) -> None:
    raise _StopWhileLoading(signum)


#: Set when threads of the app still run after the stop (a view stuck on a thread): the
#: process then leaves without finalising (``rsasgi.main``), which would wait for them.
leave_without_finalising = False


def run(worker) -> int:
    """Runs the worker until shutdown; returns the process exit code."""
    if (
        worker.supervisor_pid is not None
        or worker.timeout_request is not None
        or worker.times_own_boot
    ):
        # Written from the signal handler in C, so it works while the app
        # blocks the loop (when the supervisor asks), a WSGI thread is stuck
        # past --timeout-request (when the reactor asks) or the boot is past
        # --timeout-worker-boot (when this process asks). Into a file
        # that the asker logs as one event, when there is one: a copy of its
        # descriptor, open as long as the process (faulthandler keeps the
        # number, which the worker's own could give to another file once closed).
        dump_fd = worker.stack_dump_fd
        faulthandler.register(
            STACK_DUMP_SIGNAL,
            file=sys.stderr if dump_fd is None else os.dup(dump_fd),
            all_threads=True,
        )
    # One process with --timeout-worker-boot times its own boot from a thread of its own,
    # which writes the stacks above when it is over.
    worker.watch_boot_deadline()
    # SIGUSR1 (logrotate's postrotate) while the app loads would kill the process by its
    # default action: it is remembered, and the files are reopened once serving.
    signal.signal(signal.SIGUSR1, _remember_signal)
    # One process: SIGTERM, SIGQUIT and SIGHUP (a stop here, as once serving) would end it
    # by their default action, with no line said and its --pid and --uds files left behind;
    # they stop it as SIGINT does. A supervisor's workers leave them be: the files are the
    # supervisor's, and a worker killed by its stop signal is one that stopped.
    stop_signals = (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
    if worker.supervisor_pid is not None:
        stop_signals = ()
    before = {signum: signal.signal(signum, _stop_loading) for signum in stop_signals}
    if stop_signals:
        # Python acts on them (and on SIGINT) only between two bytecodes: an import that
        # stays in C code would not see them until it returns. The process leaves without it
        # BLOCKED_STOP_WAIT after the signal.
        worker.watch_loading_stop([signal.SIGINT, *stop_signals])
    app_dir = _add_to_path(worker.app_dir)
    warn = _warn if worker.speaks_for_all else _quiet
    try:
        app = load_app(worker.app, worker.factory, app_dir, warn)
        interface = detect_interface(app, worker.interface, worker.app, warn)
    except AppLoadError as exc:
        log("error", str(exc))
        return EXIT_BOOT_FAILURE
    except (KeyboardInterrupt, _StopWhileLoading) as exc:
        # A slow app interrupted while imported: a stop asked for, not a crash to show a
        # traceback of (the app's code, cut wherever the signal found it).
        stopped_by = exc.args[0] if isinstance(exc, _StopWhileLoading) else signal.SIGINT
        log(
            "info",
            f"Stopped by {signal.Signals(stopped_by).name} while importing {worker.app}, "
            "before serving",
        )
        return 0
    finally:
        worker.end_loading_stop_watch()
        for signum, handler in before.items():
            # Unless the app's import put a handler of its own.
            if signal.getsignal(signum) is _stop_loading:
                signal.signal(signum, handler)
    if interface == "asgi2":
        app = _asgi2_to_asgi3(app)
    try:
        loop, loop_name = new_event_loop(worker.event_loop)
    except AppLoadError as exc:
        log("error", str(exc))
        return EXIT_BOOT_FAILURE
    log(
        "info",
        f"Starting rsasgi {worker.version} (pid {os.getpid()}): app {worker.app}, "
        f"interface {interface}"
        + (f" ({worker.threads} threads)" if interface == "wsgi" else "")
        + f", loop {loop_name}, Python {sys.version.split()[0]}",
    )
    asyncio.set_event_loop(loop)
    leaving = _Leaving()
    try:
        code = loop.run_until_complete(_serve(worker, app, interface, loop, leaving))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    # Once the loop is closed: its thread pool, and anyio's (stopped as the task that ran
    # the loop ends), have been told to stop their idle threads.
    _wait_for_threads(leaving, supervised=worker.supervisor_pid is not None)
    if leaving.stopped_serving:
        log("info", "Stopped")
    return code


def check_app(
    target: str, factory: bool, app_dir: str, interface: str, loop_choice: str
) -> tuple[str, list[str]]:
    """Loads the app and makes its event loop as ``run`` would, without serving
    (``--check-config``); returns the interface and what a worker would warn of. Raises
    ``AppLoadError``."""
    warnings: list[str] = []
    with _exit_fails_the_check(target):
        app = load_app(target, factory, _add_to_path(app_dir), warnings.append)
        interface = detect_interface(app, interface, target, warnings.append)
    loop, _ = new_event_loop(loop_choice)
    loop.close()
    return interface, warnings


@contextlib.contextmanager
def _exit_fails_the_check(target: str):
    """While ``--check-config`` loads the app, ``os._exit`` from its code (in any thread)
    says so and ends the check with exit code 3: it would end it with the app's own code,
    0 included, and no result, which a script would take for a pass. A process the app
    forks exits as it asks."""
    real_exit = os._exit
    checking = os.getpid()

    def exit_while_checked(code: int) -> None:
        if os.getpid() == checking:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            message = f'rsasgi: "{target}" called os._exit({code}) while being loaded\n'
            with contextlib.suppress(OSError):
                os.write(2, message.encode(errors="replace"))
            code = EXIT_BOOT_FAILURE
        real_exit(code)

    os._exit = exit_while_checked
    try:
        yield
    finally:
        os._exit = real_exit


def _add_to_path(app_dir: str) -> str:
    """Puts ``app_dir`` first on ``sys.path``; returns it as an absolute path."""
    app_dir = os.path.abspath(app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    return app_dir


def _warn(message: str) -> None:
    log("warning", message)


def _quiet(message: str) -> None:
    """For what a worker other than the one that speaks for all would warn of again."""


def load_app(target: str, factory: bool, app_dir: str, warn=_warn):
    """Imports ``module:attr.attr`` and returns the object (called if ``factory``);
    what is worth a warning goes to ``warn``.

    ``app_dir`` is the directory searched first, named when the module is not found.

    Whatever the app raises while it is imported, got or made (a ``SystemExit``, a
    ``BaseException`` of its own) is an ``AppLoadError``: a worker that cannot load the
    app exits 3, which stops a supervisor instead of having it restart the worker again
    and again. Only a stop asked for passes (``KeyboardInterrupt``, a stop signal while
    loading).
    """
    # A crash from here on (a C extension's segfault at import, or later) writes the Python
    # stack of every thread, where it happened: the process would vanish without a word.
    with contextlib.suppress(AttributeError, OSError, RuntimeError, ValueError):
        faulthandler.enable(file=sys.stderr, all_threads=True)
    module_name, _, attr_path = target.partition(":")
    if not os.path.isdir(app_dir):
        why = "not a directory" if os.path.exists(app_dir) else "no such directory"
        raise AppLoadError(f"--app-dir {app_dir}: {why}; APP's module is looked for there")
    named_file = _as_module(module_name, attr_path)
    if named_file is not None and (
        "/" in module_name or os.path.isfile(os.path.join(app_dir, module_name))
    ):
        raise AppLoadError(
            f'"{target}" names a file, where APP takes a module name: did you mean {named_file}?'
        )
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:
        # Exiting while being imported is a failure to load like any other: said so
        # once, and not restarted in a loop by the supervisor.
        raise AppLoadError(
            f'Module "{module_name}" called sys.exit({exc.code!r}) while being imported.'
        ) from None
    except (KeyboardInterrupt, _StopWhileLoading):
        raise
    except BaseException as exc:
        if _is_the_module_itself(exc, module_name):
            hint = "is the name right?"
            if named_file is not None:
                hint = f"APP takes a module name, not a file name: did you mean {named_file}?"
            raise AppLoadError(
                f'Could not import module "{module_name}" from {app_dir} (--app-dir); {hint}'
            ) from None
        raise AppLoadError(
            _failure(f'Error while importing module "{module_name}": ', exc)
        ) from None
    app = module
    for attr in attr_path.split("."):
        try:
            app = getattr(app, attr)
        except AttributeError:
            raise AppLoadError(
                f'Attribute "{attr_path}" not found in module "{module_name}".'
            ) from None
        except (KeyboardInterrupt, _StopWhileLoading):
            raise
        except BaseException as exc:
            raise AppLoadError(
                _failure(f'Error while getting "{attr_path}" from module "{module_name}": ', exc)
            ) from None
    if _is_factory(app):
        if inspect.iscoroutinefunction(app):
            raise AppLoadError(_async_factory(target))
        if not factory:
            warn(
                f'"{target}" is a function that takes no arguments, not an application: it '
                "is taken for an application factory and called, as uvicorn does; add "
                "--factory to say so"
            )
            factory = True
    if factory:
        if not callable(app):
            raise AppLoadError(f'--factory: "{target}" is not callable.')
        try:
            app = app()
        except SystemExit as exc:
            raise AppLoadError(f'--factory: "{target}" called sys.exit({exc.code!r}).') from None
        except (KeyboardInterrupt, _StopWhileLoading):
            raise
        except BaseException as exc:
            failure = _failure(f'--factory: calling "{target}" raised ', exc)
            if isinstance(exc, TypeError) and exc.__traceback__.tb_next is None:
                # Its signature refused the call: no code of its own ran.
                failure += (
                    ". --factory calls APP with no arguments to make the application; if "
                    f'"{target}" is the application itself, leave out --factory'
                )
            raise AppLoadError(failure) from None
        if inspect.isawaitable(app):
            if inspect.iscoroutine(app):
                app.close()
            raise AppLoadError(_async_factory(target))
    if not callable(app):
        kind = type(app).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise AppLoadError(
            f'"{target}" is not callable (it is {article} {kind}); '
            "APP must name an ASGI or WSGI application."
        )
    return app


def _as_module(module_name: str, attr_path: str) -> str | None:
    """What APP should say when its module part is a file's path (``main.py``,
    ``mysite/asgi.py``), which Python's import does not take; else None."""
    if "/" not in module_name and not module_name.endswith(".py"):
        return None
    path = os.path.normpath(module_name.removesuffix(".py"))
    if os.path.isabs(path) or path.startswith(os.pardir):
        directory, name = os.path.split(path)
        return f'"{name}:{attr_path}" with --app-dir {directory}'
    return f'"{path.replace(os.sep, ".")}:{attr_path}"'


def _is_factory(app) -> bool:
    """True for a plain function that can be called with no arguments (``create_app()``,
    ``create_app(config=None)``): no application is (ASGI's takes a scope, WSGI's an environ),
    so it can only be a factory named without ``--factory``. It used to be taken for the app:
    an ASGI 3 one with no positional parameter, or ASGI 2 with one defaulted, and every
    request got a 500. An async one too, unless it can be called as an ASGI 3 app."""
    if not inspect.isfunction(app):
        return False
    signature = _signature(app)
    if signature is None:
        return False
    no_arguments = all(
        p.kind is not p.VAR_POSITIONAL and (p.default is not p.empty or p.kind is p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )
    return no_arguments and not (inspect.iscoroutinefunction(app) and _takes(signature, 3))


def _async_factory(target: str) -> str:
    return (
        f'"{target}" is an async application factory (a coroutine function that takes no '
        "arguments), which rsasgi cannot await: it loads the app before the event loop runs; "
        "make the factory a plain function (def, not async def) that returns the application, "
        "and do the async setup in the lifespan startup"
    )


def _is_the_module_itself(exc: BaseException, module_name: str) -> bool:
    """True when ``exc`` says ``module_name`` (or a package above it) does not exist,
    rather than that something the module imports is missing."""
    missing = getattr(exc, "name", None)
    return (
        isinstance(exc, ModuleNotFoundError)
        and missing is not None
        and (module_name == missing or module_name.startswith(missing + "."))
    )


def _failure(intro: str, exc: BaseException) -> str:
    """``intro`` and ``Type: message`` on one line, then the traceback of the user's code."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    message = str(exc)
    headline = f"{intro}{name}: {message}" if message else intro + name
    report = traceback.TracebackException.from_exception(exc)
    _drop_loader_frames(report)
    if _says_nothing_more(report) and not isinstance(exc, SyntaxError):
        # Raised by the call itself (a factory's missing argument): the
        # traceback would only repeat the headline. (A SyntaxError's shows
        # the file, line and caret.)
        return headline
    return headline + "\n" + "".join(report.format()).rstrip()


def _says_nothing_more(report: traceback.TracebackException) -> bool:
    """True when ``report`` has no frame, chained error or note to show."""
    chained = report.__cause__ or (None if report.__suppress_context__ else report.__context__)
    return (
        not report.stack
        and chained is None
        and not getattr(report, "__notes__", None)
        and not getattr(report, "exceptions", None)
    )


#: Frames of Python's import machinery (which Python itself hides from import
#: tracebacks) and of rsasgi: neither tells the user anything about their app.
_LOADER_FRAMES = ("<frozen importlib._bootstrap", importlib.__file__)
_RSASGI_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _drop_loader_frames(report: traceback.TracebackException) -> None:
    """Removes loader frames from ``report`` and from every exception chained to it."""
    pending = [report]
    seen = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not _is_loader_frame(frame.filename)]
        )
        pending += [current.__cause__, current.__context__]
        pending += getattr(current, "exceptions", None) or []


def _is_loader_frame(filename: str) -> bool:
    return filename.startswith(_LOADER_FRAMES) or filename.startswith(_RSASGI_DIR)


#: What each interface calls the application with.
_ARGUMENTS = {
    "asgi3": ("scope", "receive", "send"),
    "asgi2": ("scope",),
    "wsgi": ("environ", "start_response"),
}
_NAMES = {"asgi3": "ASGI 3", "asgi2": "ASGI 2", "wsgi": "WSGI"}


def detect_interface(app, requested: str, target: str, warn=_warn) -> str:
    """Returns "asgi3", "asgi2" or "wsgi" for ``app`` (``requested`` unless "auto"), once
    its signature is seen to take that interface's arguments; what is worth a warning goes
    to ``warn``.

    Raises ``AppLoadError`` when the interface found does not fit (a class where its
    instance was meant, an object whose ``__call__`` takes nothing): every request would
    be a 500. A forced one that does not fit is only warned of, as a signature can mislead
    (a decorator that copies another function's).
    """
    if requested != "auto":
        misfit = _misfit(app, requested)
        if misfit is not None:
            warn(
                f'"{target}" {misfit}; served as {_NAMES[requested]} all the same, as '
                f"--interface {requested} asks"
            )
        return requested
    interface, guess = _shape(app)
    misfit = _misfit(app, interface)
    if misfit is not None:
        raise AppLoadError(f'"{target}" {misfit}; {_misfit_hint(app, interface)}')
    if guess is not None:
        warn(
            f'"{target}" {guess}, which does not tell its interface: it is taken for '
            f"{_NAMES[interface]} ({_argument_list(interface)}); if it is not, say which with "
            "--interface asgi3, asgi2 or wsgi"
        )
    return interface


def _shape(app) -> tuple[str, str | None]:
    """The interface ``app``'s shape says, and why that is a guess (None when it is not)."""
    if inspect.isclass(app):
        if _has(app, "__await__"):
            return "asgi3", None
        # Calling the class builds the instance: with the scope, ASGI 2; with environ and
        # start_response, an iterable, PEP 3333's own example of a WSGI application class.
        wsgi_class = _has(app, "__iter__") and _positional_count(_signature(app)) == 2
        return ("wsgi" if wsgi_class else "asgi2"), None
    if _is_coroutine_function(app):
        return "asgi3", None
    signature = _signature(app)
    if signature is None:
        return "asgi3", "has a signature Python cannot read"
    fits = [interface for interface in ("asgi2", "wsgi", "asgi3") if _fits(signature, interface)]
    wrapper = _wrapper_signature(app, signature)
    if wrapper is not None and fits == ["asgi2"]:
        # A wrapper that takes anything need not call what it wraps with what it is given:
        # Werkzeug's @Request.application, (*args) around a function of the request, is WSGI.
        return "asgi2", f"takes {wrapper}, around a function that takes {signature}"
    if len(fits) == 1:
        return fits[0], None
    if not fits:
        return "asgi3", None  # which _misfit reports
    return _guess(signature), f"takes {signature}"


def _guess(signature: inspect.Signature) -> str:
    """The interface taken for a signature more than one fits."""
    # Parameters with defaults, or *args (a decorator's (*args, **kwargs), a middleware's
    # (scope, *args)): two named ones are WSGI's (environ, start_response); anything else is
    # taken for ASGI 3, the common case (one and *args is a middleware passing on what it is
    # given, where an ASGI 2 app takes its scope alone).
    return "wsgi" if _positional_count(signature) == 2 else "asgi3"


def _wrapper_signature(app, signature: inspect.Signature) -> inspect.Signature | None:
    """The signature of ``app`` itself when it differs from ``signature`` (that of the
    function it wraps, which inspect follows through ``__wrapped__``) and takes ``*args``;
    else None."""
    try:
        own = inspect.signature(app, follow_wrapped=False)
    except Exception:
        return None
    takes_anything = any(p.kind is p.VAR_POSITIONAL for p in own.parameters.values())
    return own if takes_anything and own != signature else None


def _misfit(app, interface: str) -> str | None:
    """Why ``app`` cannot be called as ``interface`` calls an application, or None when
    it can (or Python cannot tell)."""
    name = _NAMES[interface]
    if interface != "asgi3" and _is_coroutine_function(app):
        return f"is async (calling it returns a coroutine), which only ASGI 3 can serve, not {name}"
    signature = _signature(app)
    if signature is None:
        return None
    if not _fits(signature, interface):
        what = "class" if inspect.isclass(app) else "callable"
        return (
            f"is a {what} that takes {signature}, which {name} cannot call with "
            f"({_argument_list(interface)})"
        )
    if interface != "asgi2" or not inspect.isclass(app):
        return None
    # What the class returns, its instance, is called with (receive, send).
    call = _instance_call(app)
    if call is None:
        return f"is a class taken for {name}, but its instances cannot be called"
    if inspect.isfunction(call):
        method = _signature(call)
        if method is not None and not _takes(method, 3):
            return (
                f"is a class taken for {name}, which calls its instance with (receive, "
                f"send), but their __call__ takes {method}"
            )
    return None


def _misfit_hint(app, interface: str) -> str:
    if inspect.isclass(app):
        return (
            "if an instance is the application, name one (app = "
            f"{app.__qualname__}()), or add --factory to have rsasgi make it"
        )
    if _is_coroutine_function(app):
        return f"an async application is ASGI 3's: async def app({_argument_list('asgi3')})"
    return (
        "if it makes the application, add --factory; if it is one, say which interface "
        "with --interface asgi3, asgi2 or wsgi"
    )


def _argument_list(interface: str) -> str:
    return ", ".join(_ARGUMENTS[interface])


def _fits(signature: inspect.Signature, interface: str) -> bool:
    return _takes(signature, len(_ARGUMENTS[interface]))


def _takes(signature: inspect.Signature | None, count: int) -> bool:
    """Whether a callable of ``signature`` can be called with ``count`` positional
    arguments (True when the signature is unknown)."""
    if signature is None:
        return True
    try:
        signature.bind(*[None] * count)
    except TypeError:
        return False
    return True


def _positional_count(signature: inspect.Signature | None) -> int | None:
    """How many named positional parameters ``signature`` has."""
    if signature is None:
        return None
    return sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in signature.parameters.values()
    )


# Inspection reads attributes of the app itself, and an object can raise anything from
# its __getattr__ for a name it lacks (a KeyError from the settings it delegates to), which
# `hasattr` passes on: whatever inspection raises means "cannot tell".


def _signature(app) -> inspect.Signature | None:
    """The signature calling ``app`` has, or None when Python cannot tell."""
    try:
        return inspect.signature(app)
    except Exception:
        pass
    # inspect asks the object itself for __wrapped__ and __signature__ (see above), and
    # before Python 3.13 could not read a __call__ kept in __slots__ (Sentry's middleware):
    # the method a call runs has the same signature.
    call = _call_method(app)
    if call is None:
        return None
    try:
        return inspect.signature(call)
    except Exception:
        return None


def _call_method(app):
    """What calling ``app`` runs, found on its type without asking ``app``: for an object,
    its ``__call__`` bound to it; None when not found."""
    if inspect.isfunction(app) or inspect.ismethod(app) or inspect.isclass(app):
        return app
    try:
        call = inspect.getattr_static(type(app), "__call__")
        bind = getattr(type(call), "__get__", None)
        return call if bind is None else bind(call, app, type(app))
    except Exception:
        return None


def _is_coroutine_function(app) -> bool:
    for candidate in (app, _call_method(app)):
        try:
            if candidate is not None and inspect.iscoroutinefunction(candidate):
                return True
        except Exception:
            pass
    return False


def _has(app, name: str) -> bool:
    try:
        return hasattr(app, name)
    except Exception:
        return False


def _instance_call(cls):
    """The ``__call__`` a class defines for its instances (from its bases too, but not
    ``object``), or None."""
    for klass in cls.__mro__:
        if klass is not object and "__call__" in vars(klass):
            return vars(klass)["__call__"]
    return None


def _asgi2_to_asgi3(app):
    async def asgi3(scope, receive, send):
        # Each scope has its own "asgi" dict: tell the app the interface it speaks.
        scope["asgi"]["version"] = "2.0"
        instance = app(scope)
        await instance(receive, send)

    return asgi3


def new_event_loop(choice: str):
    """Creates the event loop ``--loop`` asks for; returns (loop, name)."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise AppLoadError(
                    "--loop uvloop: uvloop is not installed (pip install uvloop)"
                ) from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def _freeze_startup_objects() -> None:
    """Moves what the app holds once it has started (modules, classes, settings, caches
    filled at import) out of the garbage collector's reach (``--gc-freeze``).

    A full collection walks every object the collector tracks; for a Django app that is
    some 10 ms with the loop (or, under WSGI, the GIL) held, a few times a second under
    load. After ``gc.freeze`` it walks only what was made since. What is frozen is still
    freed when its last reference goes; but a reference cycle that runs through a frozen
    object is never collected once dropped, with any newer objects in it. That takes a
    startup object that the app lets go of later, which is rare: modules, classes and
    settings live as long as the worker. Garbage from the import is collected first.
    """
    gc.collect()
    gc.freeze()
    log(
        "debug",
        f"Left {gc.get_freeze_count()} objects that exist after startup out of garbage "
        "collection (gc.freeze; --gc-freeze false keeps them in)",
    )


def _start_heartbeat(worker, loop, stop: asyncio.Event) -> None:
    """Tells the supervisor (and systemd's watchdog), from the loop itself, that the loop
    runs; a loop the app blocks stops the heartbeat, and the supervisor replaces the
    worker. Also notices a supervisor that is gone (killed with -9) and shuts down."""
    supervisor = worker.supervisor_pid
    interval = worker.heartbeat_interval
    if interval is None:
        return

    def beat() -> None:
        worker.heartbeat()
        # The worker logs it; its reactor checks too, in case the app blocks this loop.
        if supervisor is not None and not stop.is_set() and worker.supervisor_gone():
            stop.set()
        loop.call_later(interval, beat)

    beat()


async def _start_unless_stopped(
    worker, lifespan, loop, stop: asyncio.Event, signals: tuple[int, ...]
) -> bool | None:
    """Runs the lifespan startup; returns its answer, or None when a stop signal
    (``signals``: SIGINT, SIGTERM, SIGQUIT, and SIGHUP for one process) or a vanished
    supervisor ends it first: a startup that hangs (on a database that does not answer)
    must not make CTRL+C do nothing.

    The app's lifespan task is cancelled then, and no lifespan shutdown is sent. Once
    the app has answered, its answer stands: a signal that comes as the startup ends
    leaves ``stop`` set, and the server shuts down gracefully as soon as it has started.
    A startup that blocks the loop (a synchronous connect, a long call into C code)
    never lets it see the signal: one process then leaves STARTUP_STOP_GRACE seconds
    after the signal, which it hears at the C level (as while importing: see ``run``),
    as the signal's default action would have ended it at once. A supervisor's worker
    does so when Python runs to see the signal, and is otherwise left to the
    supervisor's stop deadline, which logs its stacks."""

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            # The kernel's for a supervisor's death is logged as that (see `_serve`).
            if not (signum == signal.SIGTERM and worker.supervisor_gone()):
                name = signal.Signals(signum).name
                log("info", f"Received {name} during the application's startup: stopping")
            stop.set()

    alone = worker.supervisor_pid is None
    watchdog = _StartupWatchdog()
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    if alone:
        # Heard even while the startup blocks the loop, where the loop's callback above
        # would never run: in a system call, or in a call into C code, which Python's
        # own handler waits for.
        worker.watch_startup_stop(list(signals))
    else:
        for signum in signals:
            # Runs (then the loop's own handler) even while the startup blocks the loop
            # in a system call.
            watchdog.watch(signum)
    startup = asyncio.ensure_future(lifespan.startup())
    interrupt = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((startup, interrupt), return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupt.cancel()
        if alone:
            worker.end_loading_stop_watch()
        watchdog.end()
    if not startup.done() and not lifespan.startup_done.is_set():
        startup.cancel()
        await lifespan._abandon()
        log("info", "Application startup cancelled")
        _leave_before_serving(loop, signals)
        return None
    started = await startup
    if not started:
        _leave_before_serving(loop, signals)
    return started


#: Seconds a startup that blocks the event loop has to end once a stop signal came (as an
#: import that blocks has: see ``run``).
STARTUP_STOP_GRACE = BLOCKED_STOP_WAIT


class _StartupWatchdog:
    """Ends a supervisor's worker STARTUP_STOP_GRACE seconds after a stop signal that
    came during the lifespan startup, unless the startup has ended by then. Python must
    run to see the signal: a startup in a long call into C code is the supervisor's stop
    deadline's."""

    def __init__(self) -> None:
        self.timer: threading.Timer | None = None
        self.over = False
        self.loop_handlers: dict[int, object] = {}

    def watch(self, signum: int) -> None:
        """Puts this handler in front of the loop's Python-level one for ``signum``."""
        self.loop_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, self.signalled)

    def signalled(self, signum: int, frame) -> None:
        if self.timer is None and not self.over:
            self.timer = threading.Timer(STARTUP_STOP_GRACE, self._expired, (signum,))
            self.timer.daemon = True
            self.timer.start()
        loop_handler = self.loop_handlers.get(signum)
        if callable(loop_handler):
            loop_handler(signum, frame)

    def _expired(self, signum: int) -> None:
        if self.over:
            return
        log(
            "warning",
            f"The application's startup has not stopped {STARTUP_STOP_GRACE:g}s after "
            f"{signal.Signals(signum).name} (it blocks the event loop); exiting now",
        )
        _exit_now()

    def end(self) -> None:
        self.over = True
        if self.timer is not None:
            self.timer.cancel()


def _leave_before_serving(loop, signals: tuple[int, ...]) -> None:
    """The worker leaves before it served: a late copy of a stop signal (CTRL+C reaches
    the whole process group, then the supervisor sends SIGTERM) or a log rotation must
    not cut its exit short, as the serving path's own exit ensures."""
    for signum in signals:
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


_early_signals: set[int] = set()


def _remember_signal(signum: int, _frame) -> None:
    _early_signals.add(signum)


async def _serve(worker, app, interface, loop, leaving: _Leaving) -> int:
    state: dict = {}
    lifespan = None
    wsgi = interface == "wsgi"
    stop = asyncio.Event()
    forced = asyncio.Event()
    _start_heartbeat(worker, loop, stop)
    if worker.lifespan != "off" and not wsgi:
        lifespan = Lifespan(app, state, required=worker.lifespan == "on")
        # HUP is a supervisor's to act on; to one process it is a stop, as once serving.
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
        if worker.supervisor_pid is None:
            signals += (signal.SIGHUP,)
        started = await _start_unless_stopped(worker, lifespan, loop, stop, signals)
        if started is None:
            return 0
        if not started:
            return EXIT_BOOT_FAILURE

    create_task = loop.create_task
    # The loop holds tasks only weakly: a request task waiting on a future
    # that nothing else references would be garbage-collected mid-request.
    # Each is held here, keyed by its `send`, until its last step lets go of
    # it (cheaper per request than a done-callback, which costs a call_soon).
    request_tasks: dict[object, asyncio.Task] = {}
    # The request tasks the shutdown cancelled (any other cancellation is the app's).
    shutdown_cancels: set[asyncio.Task] = set()
    hold = request_tasks.__setitem__
    release = request_tasks.pop

    async def run_app(scope, receive, send):
        try:
            await app(scope, receive, send)
        except GeneratorExit:
            # The task is destroyed unfinished (one that ignored its cancellation,
            # at exit): nothing the app did wrong, and no client to answer.
            raise
        except BaseException as exc:  # noqa: BLE001 - reported, and the worker lives on
            # sys.exit() in a view is the app's error like any other (as in uvicorn): it
            # must not end the worker under the other requests. So is a CancelledError
            # that no shutdown asked for.
            send._finish(exc, asyncio.current_task() in shutdown_cancels)
        else:
            send._finish()
        finally:
            release(send, None)

    def spawn(scope, receive, send):
        task = create_task(run_app(scope, receive, send))
        # An eager task factory may have run it to its end already, past its release.
        if not task.done():
            hold(send, task)
        return task

    # Without a task factory (uvloop has none either), the worker starts each task
    # itself, as `request_tasks[send] = asyncio.Task(run_app(...), **task_kwargs)`:
    # what create_task does, but with no Python frame in between, and with a name
    # given (an unnamed task gets "Task-N" formatted for it, uvloop's create_task
    # too, some 1,400 instructions per request).
    task_parts = None
    if loop.get_task_factory() is None:
        task_kwargs = {"loop": loop, "name": REQUEST_TASK_NAME}
        task_parts = (asyncio.Task, run_app, task_kwargs, request_tasks)

    if wsgi:
        forcing = "closing every connection now, not waiting for WSGI threads"
    else:
        forcing = "closing every connection and cancelling requests now"
        if lifespan is not None:
            forcing += ", skipping the lifespan shutdown"

    # Under a supervisor, a terminal's CTRL+C reaches the workers as well as the
    # supervisor, which then sends SIGTERM: a repeat is not a request to force.
    # The supervisor forces with SIGQUIT.
    supervised = worker.supervisor_pid is not None

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set():
            if supervised and signum == signal.SIGTERM and worker.supervisor_gone():
                # The kernel's, for the supervisor's death (PR_SET_PDEATHSIG), which
                # supervisor_gone() has logged: nobody sent it.
                stop.set()
                return
            again = "" if supervised else " (send it again to force)"
            if signum == signal.SIGHUP:
                # Only when one process serves: under a supervisor, HUP is its own.
                log(
                    "warning",
                    f"Received {name}: one process cannot reload, shutting down gracefully"
                    f"{again}; run with --workers for a rolling restart on HUP",
                )
            else:
                log("info", f"Received {name}: shutting down gracefully{again}")
            stop.set()
        elif not forced.is_set() and (signum == signal.SIGQUIT or not supervised):
            again = "" if signum == signal.SIGQUIT else " again"
            log("warning", f"Received {name}{again}: forcing the shutdown ({forcing})")
            forced.set()
            worker.shutdown(0.0)

    def on_quit() -> None:
        stop.set()
        on_signal(signal.SIGQUIT)

    if worker.gc_freeze:
        _freeze_startup_objects()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGQUIT, on_quit)
    loop.add_signal_handler(signal.SIGUSR1, worker.reopen_log_file)
    if signal.SIGUSR1 in _early_signals:
        _early_signals.discard(signal.SIGUSR1)
        worker.reopen_log_file()
    if not supervised:
        # Their default action stops (freezes) the process: a gunicorn habit must not
        # hang the server.
        def on_resize(signum: int) -> None:
            name = signal.Signals(signum).name
            log("warning", f"Received {name}: changing the number of workers needs --workers")

        for signum in (signal.SIGTTIN, signal.SIGTTOU):
            loop.add_signal_handler(signum, on_resize, signum)
        # A closed terminal, or `kill -HUP` from a gunicorn habit or a systemd unit's
        # ExecReload: its default action would end the process at once, mid-request.
        loop.add_signal_handler(signal.SIGHUP, on_signal, signal.SIGHUP)
    # gunicorn's upgrade on the fly, whose default action too would end the process at
    # once. Unless it is faulthandler's (see `run`): the supervisor's, or the reactor's
    # for a WSGI thread stuck past --timeout-request, to have the stacks written.
    usr2_dumps_stacks = supervised or worker.timeout_request is not None
    if not usr2_dumps_stacks:

        def on_upgrade() -> None:
            log(
                "warning",
                "Received SIGUSR2: ignored, rsasgi does not re-execute itself on USR2 as "
                "gunicorn does; restart it to load new code (or run with --workers, whose "
                "SIGHUP replaces the workers one by one)",
            )

        loop.add_signal_handler(signal.SIGUSR2, on_upgrade)
    # The handlers stay until the very end, so that a second signal can cut
    # short any step of the shutdown, the lifespan shutdown included.
    try:
        stopped = loop.create_future()
        try:
            if wsgi:
                fd = worker.start(loop, stopped, wsgi_app=app)
            else:
                fd = worker.start(loop, stopped, spawn=spawn, state=state, task_parts=task_parts)
        except RuntimeError as exc:
            log("error", f"Could not start serving: {exc}")
            if lifespan is not None:
                await lifespan.shutdown(forced, None)
            # Under a supervisor the next worker would fail the same way (a TLS key its
            # --user cannot read): a boot failure, not a crash to restart for ever.
            return EXIT_BOOT_FAILURE if supervised else 1
        loop.add_reader(fd, worker.drain)
        try:
            await asyncio.wait(
                [asyncio.ensure_future(stop.wait()), stopped], return_when=asyncio.FIRST_COMPLETED
            )
            # The reactor stops by itself when the supervisor is gone (see beat).
            if not stop.is_set() and not worker.supervisor_gone():
                log("error", "The server stopped unexpectedly; exiting")
            grace = worker.timeout_graceful_shutdown
            worker.shutdown(0.0 if forced.is_set() else grace)
            # The grace period covers the app's work, not only its connections: what still
            # runs once its connection has closed (a BackgroundTask after the response, a
            # WSGI iterable's close()) is waited for until it ends, as uvicorn and gunicorn
            # do; what the grace period's end cut off gets the bounded steps below.
            grace_ends = time.monotonic() + grace
            await stopped
            closed = time.monotonic()
            if wsgi:
                app_work_ends = max(grace_ends, closed + WSGI_THREADS_WAIT)
                # The threads get no more once the loop is closed.
                leaving.threads_deadline = app_work_ends
            else:
                app_work_ends = max(grace_ends, closed + REQUEST_TASKS_WAIT)
                # Then cancelled tasks get their clean-up; the threads (a sync view's,
                # which cancelling its task does not stop) what is left of it once the
                # loop is closed.
                leaving.threads_deadline = app_work_ends + CANCELLED_TASKS_WAIT
            waiting = _AppWorkWait(grace, grace_ends, supervised)
            # The reactor has closed every connection; let apps see their
            # disconnects, then cancel what still runs.
            worker.drain()
            await _cancel_request_tasks(
                list(request_tasks.values()), forced, shutdown_cancels, app_work_ends, waiting
            )
        finally:
            loop.remove_reader(fd)
        if wsgi and not forced.is_set():
            stuck = worker.wsgi_threads_stuck()
            waiting.announce(
                worker.wsgi_threads_running(),
                "WSGI thread(s)",
                f"{stuck} stuck in the app past --timeout-request, whose stacks are logged above"
                if stuck
                else "an iterable's close(), or a client that left",
            )
            wait = max(app_work_ends - time.monotonic(), 0.0)
            joined = _join_on_daemon(loop, worker, wait)
            threads_done = await _unless_forced(joined, forced) and joined.result()
        else:
            # `stopped` is done, so the reactor thread is ending and this
            # returns at once; WSGI threads busy in the app get no time when
            # forced, idle ones the moment they need to leave.
            busy = worker.wsgi_threads_running() if wsgi else 0
            threads_done = worker.join(0.0 if busy else IDLE_WSGI_THREADS_WAIT)
        if not threads_done:
            # A WSGI thread is stuck in the app; the interpreter cannot finalise
            # under it, so leave without finalising.
            log(
                "warning",
                "WSGI threads still running after shutdown; exiting without waiting for "
                f"them. Where each one is:{_foreign_thread_stacks()}",
            )
            _skip_finalising()
        if lifespan is not None:
            # What the steps before left of the stop's time (all of it after the grace
            # period, with no connection open), less the exit's own steps.
            await lifespan.shutdown(forced, grace_ends + STOP_AFTER_GRACE - EXIT_STEPS_WAIT)
        if forced.is_set() or (lifespan is not None and lifespan.cancelled):
            # What was cancelled gets one step to run its except and finally blocks.
            await asyncio.sleep(0)
        leaving.stopped_serving = True
        return 0
    finally:
        leaving.forced = forced.is_set()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        # A log rotation as the process leaves must not kill it: nothing is left to reopen.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if not supervised:
            for signum in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP):
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_IGN)
        if not usr2_dumps_stacks:
            loop.remove_signal_handler(signal.SIGUSR2)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        if supervised:
            # A late copy of the stop signal (CTRL+C reaches the whole process
            # group, then the supervisor sends SIGTERM) must not cut the exit short.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)


def _join_on_daemon(loop, worker, timeout: float) -> asyncio.Future:
    """Runs ``worker.join(timeout)`` on a daemon thread of its own; the future has its
    answer. Not on the loop's executor: a forced stop leaves the join blocked until the
    stuck WSGI threads or the timeout end, and the exit would take that thread of
    rsasgi's for one of the app's still running (and wait for it)."""
    joined = loop.create_future()

    def answer(done: bool) -> None:
        if not joined.done():
            joined.set_result(done)

    def join() -> None:
        done = worker.join(timeout)
        # The loop is closed by then when the stop was forced: nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(answer, done)

    threading.Thread(target=join, name="rsasgi-wsgi-join", daemon=True).start()
    return joined


def _foreign_thread_stacks() -> str:
    """The Python stacks of the threads running Python code that ``threading`` did not
    start (the WSGI pool's, which the reactor starts), one after the other."""
    started = {
        thread.ident
        for thread in threading.enumerate()
        if not isinstance(thread, threading._DummyThread)
    }
    return "".join(
        f"\nThread {ident} (most recent call last):\n"
        + "".join(traceback.format_stack(frame)).rstrip()
        for ident, frame in sys._current_frames().items()
        if ident not in started
    )


async def _cancel_request_tasks(
    tasks: list, forced: asyncio.Event, cancelled: set, until: float, waiting: _AppWorkWait
) -> None:
    """Gives request tasks still running until ``until`` (on ``time.monotonic()``) to
    end, then cancels them (adding each to ``cancelled``) and waits up to
    ``CANCELLED_TASKS_WAIT`` more; once ``forced`` is set, cancels them without waiting."""
    running = [task for task in tasks if not task.done()]
    if not running:
        return
    if not forced.is_set():
        waiting.announce(
            len(running),
            "request task(s)",
            "a background task, a WebSocket's disconnect handler, or a client that left",
        )
        wait = max(until - time.monotonic(), 0.0)
        await _unless_forced(asyncio.wait(running, timeout=wait), forced)
    remaining = [task for task in running if not task.done()]
    if not remaining:
        return
    log("warning", f"Cancelling {len(remaining)} request task(s) still running after shutdown")
    cancelled.update(remaining)
    for task in remaining:
        task.cancel()
    if not forced.is_set():
        await _unless_forced(asyncio.wait(remaining, timeout=CANCELLED_TASKS_WAIT), forced)


class _AppWorkWait:
    """Says, once the connections have closed within the grace period, that the stop
    waits for the app's work still running (uvicorn's "Waiting for background tasks to
    complete"): the stop otherwise looks stuck for as long as that takes."""

    def __init__(self, grace: float, grace_ends: float, supervised: bool) -> None:
        self.grace = grace
        self.grace_ends = grace_ends
        self.supervised = supervised

    def announce(self, count: int, what: str, examples: str) -> None:
        left = self.grace_ends - time.monotonic()
        if count == 0 or left <= 0:
            return
        # Under a supervisor a repeat of the signal is ignored: the supervisor forces.
        force = "" if self.supervised else "; send the signal again to force"
        log(
            "info",
            f"Waiting for {count} {what} still running after their connection closed "
            f"({examples}), for up to {left:.1f}s more "
            f"(--timeout-graceful-shutdown {self.grace:g}s){force}",
        )


async def _unless_forced(awaitable, forced: asyncio.Event, timeout: float | None = None) -> bool:
    """Awaits ``awaitable`` until it ends or ``forced`` is set (or ``timeout`` seconds
    pass), whichever comes first; returns False (and cancels it) unless it ended."""
    work = asyncio.ensure_future(awaitable)
    interrupt = asyncio.ensure_future(forced.wait())
    try:
        await asyncio.wait((work, interrupt), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupt.cancel()
    if work.done():
        return True
    work.cancel()
    return False


#: How long the exit waits for Python's buffered output to be written: a reader that
#: stalled (a full pipe nobody reads) would otherwise keep the process for good.
STREAMS_FLUSH_WAIT = 1.0


def flush_streams() -> bool:
    """Writes Python's buffered stdout and stderr, waiting at most STREAMS_FLUSH_WAIT;
    False when that was not enough (the write still blocks, on its own thread)."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()

    flusher = threading.Thread(target=flush, name="rsasgi-exit-flush", daemon=True)
    flusher.start()
    flusher.join(STREAMS_FLUSH_WAIT)
    return not flusher.is_alive()


def _exit_now() -> None:
    """Ends the process with code 0 without finalising, once Python's own buffered
    output and the server's queued log lines are written (or a while has passed)."""
    flush_streams()
    flush_logs()
    os._exit(0)


class _Leaving:
    """What the stop tells the steps after the event loop: when the app's threads must
    have ended (on ``time.monotonic()``; None when the stop ended before serving), whether
    it was forced, and whether the server had stopped serving (rather than starting)."""

    def __init__(self) -> None:
        self.threads_deadline: float | None = None
        self.forced = False
        self.stopped_serving = False


#: How long threads that were only idle get to end once told to (a thread pool's), even
#: when the stop was forced or has no time left.
IDLE_THREADS_WAIT = 0.5

#: What the process needs once the lifespan shutdown is over, at most: the threads that
#: were only idle end, and Python's buffered output is written.
EXIT_STEPS_WAIT = IDLE_THREADS_WAIT + STREAMS_FLUSH_WAIT

#: How often the exit looks whether the app's threads have ended.
THREADS_POLL = 0.05


def _wait_for_threads(leaving: _Leaving, supervised: bool) -> None:
    """Gives the threads that still run once the event loop is closed (a sync view that
    asgiref or anyio runs on a thread, which cancelling its task does not stop) what is left
    of the stop's time; then logs where each one is and has the process leave without
    finalising, which would wait for them without bound (Python's exit joins every thread
    that is not a daemon). A stop signal ends the wait."""
    if not _running_threads():
        return
    _stop_idle_threads()
    now = time.monotonic()
    if leaving.forced:
        deadline = now
    elif leaving.threads_deadline is None:
        # The startup was cancelled, or failed: what a cancelled task gets to clean up.
        deadline = now + CANCELLED_TASKS_WAIT
    else:
        deadline = leaving.threads_deadline
    deadline = max(deadline, now + IDLE_THREADS_WAIT)
    forced: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        if not forced:
            forced.append(signum)
            again = "" if signum == signal.SIGQUIT else " again"
            log(
                "warning",
                f"Received {signal.Signals(signum).name}{again}: forcing the shutdown "
                "(not waiting for the threads still running)",
            )

    # Under a supervisor, SIGINT and SIGTERM are ignored by now (see `_serve`).
    signals = [signal.SIGQUIT] if supervised else [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT]
    before = {signum: signal.signal(signum, on_signal) for signum in signals}
    try:
        while (running := _running_threads()) and not forced and time.monotonic() < deadline:
            time.sleep(THREADS_POLL)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    if not running:
        return
    frames = sys._current_frames()
    stacks = "".join(
        f'\nThread "{thread.name}" (most recent call last):\n'
        + "".join(traceback.format_stack(frames[thread.ident])).rstrip()
        for thread in running
        if thread.ident in frames
    )
    log(
        "warning",
        f"{len(running)} thread(s) still running after shutdown; exiting without waiting "
        f"for them. Where each one is:{stacks}",
    )
    _skip_finalising()


def _skip_finalising() -> None:
    global leave_without_finalising
    leave_without_finalising = True


def _running_threads() -> list[threading.Thread]:
    """The threads that Python's exit would wait for."""
    main = threading.main_thread()
    return [
        thread
        for thread in threading.enumerate()
        if thread is not main and not thread.daemon and thread.is_alive()
    ]


def _stop_idle_threads() -> None:
    """Runs the steps of Python's exit that come before it waits for the threads, where
    ``concurrent.futures`` tells every thread pool's idle threads to stop (else they would
    look stuck); on a thread of its own, as they then wait for those threads without bound.
    Python's exit runs them again, to no effect."""
    steps = list(getattr(threading, "_threading_atexits", ()))
    if not steps:
        return

    def run() -> None:
        for step in reversed(steps):
            with contextlib.suppress(Exception):
                step()

    threading.Thread(target=run, name="rsasgi-exit-pools", daemon=True).start()


class Lifespan:
    """Runs the ASGI lifespan protocol in a task of its own."""

    def __init__(self, app, state: dict, required: bool):
        self.app = app
        self.state = state
        self.required = required
        self.task: asyncio.Task | None = None
        self.events: asyncio.Queue = asyncio.Queue()
        self.startup_done = asyncio.Event()
        self.shutdown_done = asyncio.Event()
        self.startup_failed: str | None = None
        self.shutdown_failed: str | None = None
        self.unsupported = False
        self.error = False
        self.cancelled = False

    async def startup(self) -> bool:
        """Sends lifespan.startup; returns False when the server must not start."""
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.events.put({"type": "lifespan.startup"})
        await self.startup_done.wait()
        if self.startup_failed is not None:
            log("error", f"Application startup failed: {self.startup_failed}")
            await self._abandon()
            return False
        if self.error and self.required:
            log("error", "Application startup failed: the app raised in the lifespan protocol")
            await self._abandon()
            return False
        if not self.unsupported and not self.error:
            log("info", "Application startup complete")
        return True

    async def _abandon(self) -> None:
        """After a failed startup: ends the app's lifespan task if it still waits (for a
        shutdown that will not come), so that it is not destroyed pending."""
        if self.task is not None and not self.task.done():
            self.cancelled = True
            self.task.cancel()
            await asyncio.wait([self.task], timeout=1.0)

    async def shutdown(self, forced: asyncio.Event, until: float | None) -> None:
        """Sends lifespan.shutdown and waits for the app's answer until ``until`` (on
        ``time.monotonic()``; within a supervisor's deadline for a stopping worker), and
        LIFESPAN_SHUTDOWN_ALLOWANCE at least. A forced shutdown (``forced`` set before or
        during the wait) cancels the app's lifespan task instead, and does not report that
        as an error; one that does not answer in time is cancelled with a warning."""
        if self.unsupported or self.error or self.task is None or self.task.done():
            return
        if not forced.is_set():
            await self.events.put({"type": "lifespan.shutdown"})
            answered = self.shutdown_done.wait()
            allowed = LIFESPAN_SHUTDOWN_ALLOWANCE
            if until is not None:
                allowed = max(until - time.monotonic(), allowed)
            if await _unless_forced(answered, forced, allowed):
                if self.shutdown_failed is not None:
                    log("error", f"Application shutdown failed: {self.shutdown_failed}")
                elif self.error:
                    log("error", "Application shutdown failed: the app raised (traceback above)")
                else:
                    log("info", "Application shutdown complete")
                return
            if not forced.is_set():
                log(
                    "warning",
                    "The application's shutdown did not complete within "
                    f"{allowed:.3g}s (lifespan.shutdown unanswered); "
                    "cancelling it",
                )
        self.cancelled = True
        self.task.cancel()

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - reported below
            if (
                self.cancelled
                or self.startup_failed is not None
                or self.shutdown_failed is not None
            ):
                return
            self.error = True
            if not self.required and not self.startup_done.is_set():
                self.unsupported = True
                log(
                    "info",
                    "ASGI 'lifespan' protocol appears unsupported by the app "
                    f"({type(exc).__name__}: {exc}); carrying on without it",
                )
            else:
                log(
                    "error",
                    "Exception in 'lifespan' protocol\n" + traceback.format_exc().rstrip(),
                )
        finally:
            self.startup_done.set()
            self.shutdown_done.set()

    async def _receive(self):
        return await self.events.get()

    async def _send(self, message) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "lifespan.startup.complete" and not self.startup_done.is_set():
            self.startup_done.set()
        elif kind == "lifespan.startup.failed" and not self.startup_done.is_set():
            self.startup_failed = message.get("message", "") or "(no message)"
            self.startup_done.set()
        elif kind == "lifespan.shutdown.complete" and self.startup_done.is_set():
            self.shutdown_done.set()
        elif kind == "lifespan.shutdown.failed" and self.startup_done.is_set():
            self.shutdown_failed = message.get("message", "") or "(no message)"
            self.shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {message!r}")
