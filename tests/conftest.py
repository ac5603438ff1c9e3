import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.pipeline import dvc, make_pipeline_repo, run
from tests.smoke import SMOKE


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch) -> Iterator[None]:
    """No test may reach a model hub; and tests use tiny tensors, for which handing work to a second
    thread costs more than it saves (far more on a busy 2-core machine)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> tuple[Path, str]:
    """The whole pipeline reproduced once on smoke-size params: (repo path, `dvc repro` output)."""
    path = make_pipeline_repo(tmp_path_factory.mktemp("pipeline"), SMOKE)
    result = dvc("repro", cwd=path)
    run(["git", "add", "-A"], cwd=path)  # commit dvc.lock, as a user would after a run
    run(["git", "commit", "-q", "-m", "reproduced", "--allow-empty"], cwd=path)
    return path, result.stdout


@pytest.fixture(scope="module")
def fake():
    """The fake Telegram Bot API on 127.0.0.1, one per test module that asks for it (imported
    here, not at the top, so tests that do not use it never load the bot's code)."""
    from tests.bot_harness import TOKEN
    from tests.fake_telegram import FakeTelegram

    server = FakeTelegram(TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def pipeline_copy(smoke_pipeline, tmp_path) -> Path:
    """A private copy of the reproduced pipeline, for tests that tamper with it."""
    source, _ = smoke_pipeline
    dest = tmp_path / "copy"
    shutil.copytree(source, dest, symlinks=True)
    return dest
