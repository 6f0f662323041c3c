"""What snapctl logs while a command goes on: said on stderr by its level, and kept for -o json."""

from __future__ import annotations

import logging

import pytest

from snapctl import logged_warnings as module


@pytest.fixture
def said():
    root = logging.getLogger()
    before = list(root.handlers)
    module._logged.clear()
    module.say_logged_warnings()
    yield
    root.handlers[:] = before
    module._logged.clear()


def test_an_error_logged_is_said_as_an_error_with_its_traceback_not_as_a_warning(said, capsys) -> None:
    # ERROR records (an embedded agent's "would not release") were printed as `warning: ...`, and
    # log.exception's traceback was dropped.
    log = logging.getLogger("snapctl.agent")
    log.warning("token file is readable by others")
    log.error("the engine would not release")
    try:
        raise OSError("connection refused")
    except OSError:
        log.exception("engine complete failed")
    err = capsys.readouterr().err
    assert "warning: token file is readable by others\n" in err
    assert "error: the engine would not release\n" in err
    assert "error: engine complete failed\nTraceback (most recent call last):" in err
    assert "OSError: connection refused" in err
    assert module.logged_warnings() == {"warnings": ["token file is readable by others", "the engine would not release",
                                                     "engine complete failed"]}
    logging.getLogger("urllib3").warning("another library's")
    assert capsys.readouterr().err == "another library's\n"
