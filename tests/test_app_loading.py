"""Loading APP: whatever the app's import or factory does to fail (a BaseException of its
own, sys.exit, a segfault) and whatever the command line gets wrong (a missing --app-dir, a
file's name for the module) is one clear error and exit 3, which stops a supervisor instead
of having it start the worker again and again.

Each test writes its app's module into its own directory.
"""

from __future__ import annotations

import os

import pytest
from conftest import APPS


def write_app(tmp_path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    return str(tmp_path)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "supervised"])
def test_a_base_exception_raised_at_import_fails_to_load(run_rsasgi, tmp_path, workers):
    """It escaped as a bare traceback and exit 1, which a supervisor restarts for ever."""
    app_dir = write_app(
        tmp_path, "load_base", "class Boom(BaseException):\n    pass\n\n\nraise Boom('base')\n"
    )
    server = run_rsasgi("load_base:app", "--app-dir", app_dir, *workers, wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    assert 'Error while importing module "load_base": load_base.Boom: base' in output
    assert f'File "{tmp_path / "load_base.py"}", line 5, in <module>' in output, output


@pytest.mark.parametrize(
    "code, shown, workers",
    [("'no config'", "'no config'", ["--workers", "2"]), ("0", "0", [])],
    ids=["message-supervised", "zero-alone"],
)
def test_a_factory_that_calls_sys_exit_fails_to_load(run_rsasgi, tmp_path, code, shown, workers):
    """sys.exit("no config") in a factory: the supervisor restarted the workers for ever;
    sys.exit(0): a single process exited 0 without a word."""
    app_dir = write_app(
        tmp_path, "load_exit", f"import sys\n\n\ndef create():\n    sys.exit({code})\n"
    )
    args = ("load_exit:create", "--factory", "--app-dir", app_dir, *workers)
    server = run_rsasgi(*args, wait=False)
    assert server.wait_exit() == 3
    output = server.output()
    # From each worker that tried.
    lines = [line for line in output.splitlines() if "load_exit:create" in line]
    assert lines, output
    for line in lines:
        assert line.endswith(f'--factory: "load_exit:create" called sys.exit({shown}).'), output
    assert "Traceback" not in output


def test_a_segfault_while_importing_shows_where(run_rsasgi, tmp_path):
    """A crash in C code at import ended the process with no word of where it was."""
    app_dir = write_app(tmp_path, "load_segv", "import ctypes\n\nctypes.string_at(0)\n")
    server = run_rsasgi("load_segv:app", "--app-dir", app_dir, wait=False)
    assert server.wait_exit() == -11
    output = server.output()
    assert "Fatal Python error: Segmentation fault" in output, output
    assert f'File "{tmp_path / "load_segv.py"}", line 3 in <module>' in output, output


def test_an_app_dir_that_does_not_exist_is_refused(run_rsasgi, tmp_path):
    """Even when the module is found elsewhere on sys.path: the setting was a typo."""
    missing = tmp_path / "nowhere"
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(APPS)]))
    server = run_rsasgi(
        "err_cli_app:app", "--app-dir", str(missing), env={"PYTHONPATH": path}, wait=False
    )
    assert server.wait_exit() == 3
    message = f"--app-dir {missing}: no such directory; APP's module is looked for there"
    assert message in server.output()


@pytest.mark.parametrize(
    "app, meant",
    [
        ("load_file.py:app", '"load_file:app"'),
        ("./sub/load_file.py:app", '"sub.load_file:app"'),
        ("{tmp_path}/load_file.py:app", '"load_file:app" with --app-dir {tmp_path}'),
    ],
    ids=["file", "relative-path", "absolute-path"],
)
def test_a_file_named_for_the_module_gets_the_module_name(run_rsasgi, tmp_path, app, meant):
    """Without importing anything: `load_file.py` imported the module load_file (its
    code ran), then failed on the "py" in it with no hint."""
    (tmp_path / "sub").mkdir()
    marker = tmp_path / "imported"
    source = f"import pathlib\n\npathlib.Path({str(marker)!r}).touch()\n"
    write_app(tmp_path, "load_file", source)
    write_app(tmp_path / "sub", "load_file", source)
    app = app.format(tmp_path=tmp_path)
    server = run_rsasgi(app, "--app-dir", str(tmp_path), wait=False)
    assert server.wait_exit() == 3
    message = (
        f'"{app}" names a file, where APP takes a module name: did you mean '
        f"{meant.format(tmp_path=tmp_path)}?"
    )
    assert message in server.output()
    assert not marker.exists()


def test_a_module_name_ending_in_py_that_is_not_found_gets_a_hint(run_rsasgi, tmp_path):
    server = run_rsasgi("load_typo.py:app", "--app-dir", str(tmp_path), wait=False)
    assert server.wait_exit() == 3
    assert (
        f'Could not import module "load_typo.py" from {tmp_path} (--app-dir); APP takes a '
        'module name, not a file name: did you mean "load_typo:app"?'
    ) in server.output()
