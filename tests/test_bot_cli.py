"""`emojich bot`: setup mistakes are one clear line and exit status 2; the token never reaches a log."""

import io
import logging

import pytest
import yaml

from emojich.bot.app import setup_logging
from emojich.cli import main as cli
from tests.bot_harness import TOKEN


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with a params.yaml and no pipeline outputs."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"bot": {"candidates": 4}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMOJICH_BOT_TOKEN", raising=False)
    return tmp_path


def _error(capsys, argv):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("emojich bot: error: "), err
    return err


def test_a_missing_token_is_a_clear_error(project, capsys):
    assert "--token-file PATH or set $EMOJICH_BOT_TOKEN" in _error(capsys, ["bot"])
    assert "does not exist" in _error(capsys, ["bot", "--token-file", "nope.txt"])


def test_the_api_url_must_be_http(project, capsys, monkeypatch):
    monkeypatch.setenv("EMOJICH_BOT_TOKEN", TOKEN)
    assert "must be an http:// or https:// URL" in _error(capsys, ["bot", "--api-url", "127.0.0.1:8081/bot"])


def test_a_malformed_token_is_refused_without_echoing_it(project, capsys):
    (project / "token").write_text("my-secret-but-wrong")
    err = _error(capsys, ["bot", "--token-file", "token"])
    assert "does not hold a bot token" in err and "my-secret-but-wrong" not in err


def test_missing_weights_and_bad_settings_are_named(project, capsys, monkeypatch):
    monkeypatch.setenv("EMOJICH_BOT_TOKEN", TOKEN)
    err = _error(capsys, ["bot"])
    assert "data/finetune/model.safetensors does not exist: run the pipeline first" in err
    assert TOKEN not in err
    (project / "params.yaml").write_text(yaml.safe_dump({"bot": {"candidates": 1}}))
    assert "bot.candidates must be 2-10" in _error(capsys, ["bot"])
    (project / "params.yaml").write_text(yaml.safe_dump({"bot": {"candidatse": 4}}))
    assert "unknown parameter(s) candidatse" in _error(capsys, ["bot"])


def test_the_log_never_shows_the_token():
    stream = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("", "httpx", "httpcore", "apscheduler")]
    saved = [(logger, logger.handlers[:], logger.level) for logger in loggers]
    try:
        setup_logging(TOKEN, "DEBUG", stream)
        logging.getLogger("httpx").debug("POST https://api.telegram.org/bot%s/getMe", TOKEN)
        url = f"https://api.telegram.org/bot{TOKEN}/getUpdates"
        try:
            raise RuntimeError(f"connect to {url} failed")
        except RuntimeError:
            logging.getLogger("telegram.ext").exception("polling failed")
    finally:
        for logger, handlers, level in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
    text = stream.getvalue()
    assert TOKEN not in text
    assert text.count("/bot<token>/") == 2  # the logged URL, and the one in the exception
