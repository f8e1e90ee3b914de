import io
import json
import logging

import pytest

from monitor.core.logs import JsonFormatter, TextFormatter, setup_logging


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
    log = logging.getLogger("monitor.poll.cycle")
    log.info("poll of %s failed", "prod", extra={"target": "prod", "region": "eu-west-1"})
    log.warning("two\nlines", extra={"image": "ami-1"})
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["level"] == "INFO"
    assert first["logger"] == "monitor.poll.cycle"
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


FORGED = "ami-1\nERROR monitor.poll.cycle: poll of prod/us-east-1 failed: forged\x1b[31m"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_record_whose_message_and_context_hold_line_breaks_is_one_line(captured, fmt):
    setup_logging("INFO", fmt, captured)
    extra = {"target": "prod\nINFO x: y", "region": "us-east-1\r\n", "image": FORGED}
    logging.getLogger("monitor.poll.cycle").warning(
        "image %s failed: %s", FORGED, "a\u2028b", extra=extra
    )

    (line,) = captured.getvalue().splitlines()
    assert "\x1b" not in line
    if fmt == "json":
        entry = json.loads(line)
        assert entry["message"] == f"image {FORGED} failed: a\u2028b"
        assert entry["image"] == FORGED
        assert entry["target"] == "prod\nINFO x: y"
    else:
        assert line == (
            "WARNING monitor.poll.cycle: image ami-1\\nERROR monitor.poll.cycle: "
            "poll of prod/us-east-1 "
            "failed: forged\\x1b[31m failed: a\\u2028b"
        )


def test_a_text_traceback_cannot_forge_a_log_line_with_its_exception_message(captured):
    setup_logging("INFO", "text", captured)
    try:
        raise ValueError(FORGED)
    except ValueError:
        logging.getLogger("monitor").exception("it failed")

    lines = captured.getvalue().splitlines()
    assert lines[0] == "ERROR monitor: it failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert [line for line in lines if line.startswith(("ERROR", "INFO", "WARNING"))] == [lines[0]]
    assert lines[-1].startswith("ValueError: ami-1\\nERROR monitor.poll.cycle")
    assert "\x1b" not in captured.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_credentials_in_a_logged_url_are_masked_in_both_formats(captured, fmt):
    setup_logging("INFO", fmt, captured)
    try:
        raise ConnectionError("to http://user:s3cret-canary@127.0.0.1:1/ refused")
    except ConnectionError:
        logging.getLogger("monitor").exception("endpoint http://user:s3cret-canary@h/ failed")

    output = captured.getvalue()
    assert "s3cret-canary" not in output
    assert "endpoint http://user:***@h/ failed" in output
    assert "ConnectionError: to http://user:***@127.0.0.1:1/ refused" in output
