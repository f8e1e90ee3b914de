import io
import json
import logging

import pytest

from monitor.logs import JsonFormatter, TextFormatter, setup_logging


@pytest.fixture
def captured():
    """A stream to log to; the logging setup is put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quieted = {name: logging.getLogger(name).level for name in ("apscheduler", "botocore")}
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quieted.items():
        logging.getLogger(name).setLevel(old)


def test_json_logs_are_one_object_a_line_with_their_context(captured):
    setup_logging("INFO", "json", captured)
    log = logging.getLogger("monitor.cycle")
    log.info("poll of %s failed", "prod", extra={"target": "prod", "region": "eu-west-1"})
    log.warning("two\nlines", extra={"image": "ami-1"})
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["level"] == "INFO"
    assert first["logger"] == "monitor.cycle"
    assert first["message"] == "poll of prod failed"
    assert (first["target"], first["region"]) == ("prod", "eu-west-1")
    assert first["time"].endswith("+00:00")
    assert second["message"] == "two\nlines"
    assert second["image"] == "ami-1"


def test_an_exception_stays_inside_its_json_line(captured):
    setup_logging("INFO", "json", captured)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("monitor").exception("it failed")
    (line,) = captured.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_the_level_filters_and_chatty_libraries_stay_quiet(captured):
    setup_logging("INFO", "text", captured)
    logging.getLogger("monitor").debug("hidden")
    logging.getLogger("botocore").info("hidden too")
    logging.getLogger("monitor").info("shown")
    assert captured.getvalue().splitlines() == ["INFO monitor: shown"]


def test_both_formatters_print_the_message_they_are_given():
    record = logging.LogRecord("monitor", logging.ERROR, __file__, 1, "x=%s", ("1",), None)
    assert TextFormatter().format(record) == "ERROR monitor: x=1"
    assert json.loads(JsonFormatter().format(record))["message"] == "x=1"
