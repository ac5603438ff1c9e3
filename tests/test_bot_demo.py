"""`emojich bot` as a user runs it, on the checkpoint and U-Net of a smoke-size pipeline run.

The bot is started with the real command line (token file, --api-url) in the reproduced project,
draws with the real model in its worker, and the sticker it makes is traced by `emojich lineage`
back to the training data.
"""

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from emojich.lineage.trace import trace
from tests.bot_harness import TOKEN
from tests.fake_telegram import FakeTelegram
from tests.pipeline import pipeline_env, run

pytestmark = pytest.mark.slow

USER = 4001


def _has_candidates(message):
    return "pick:" in json.dumps(message.get("reply_markup", {}))


def test_the_bot_command_makes_a_traceable_sticker_with_the_demo_checkpoint(pipeline_copy, tmp_path):
    root = pipeline_copy
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["bot"].update(poll_timeout=1, candidates=2, attempts=2, threads=1)
    (root / "params.yaml").write_text(
        yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    run(["git", "commit", "-q", "-am", "bot settings for the test"], cwd=root)  # lineage checks the commit
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    log = tmp_path / "bot.log"

    fake = FakeTelegram(TOKEN).start()
    command = [sys.executable, "-m", "emojich.cli", "bot", "--token-file", str(token_file)]
    with open(log, "wb") as out:
        bot = subprocess.Popen(
            [*command, "--api-url", fake.api_url],
            cwd=root,
            env=pipeline_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        fake.wait_for(lambda: fake.calls_named("setMyCommands"), timeout=120, what="the bot to start")
        fake.send(USER, "/newpack Демо")
        fake.wait_for_text(USER, "начат")
        sent = time.monotonic()
        fake.send(USER, "кот")
        keyboard = fake.wait_for_message(USER, _has_candidates, timeout=120)
        print(f"caption -> candidates with the smoke checkpoint: {time.monotonic() - sent:.2f} s")
        group = fake.calls_named("sendMediaGroup")[-1]
        assert len(group.params["media"]) == 2
        fake.press(USER, keyboard, keyboard["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
        fake.wait_for_text(USER, "эмодзи")
        fake.send(USER, "🐱")
        done = fake.wait_for_text(USER, "Готово", timeout=120)
        bot.terminate()
        assert bot.wait(60) == 0
    finally:
        if bot.poll() is None:
            bot.kill()
        fake.stop()
    output = log.read_text()
    assert TOKEN not in output and "model.safetensors, 512 px by" in output

    name = re.search(r"t\.me/addstickers/(\w+)", done["text"]).group(1)
    assert name == "demo_by_emojich_test_bot" and len(fake.sets[name]["stickers"]) == 1
    stickers = [p for p in (root / "data/bot/stickers").rglob("*.webp") if ".thumb" not in p.name]
    assert len(stickers) == 1
    sidecar = json.loads(stickers[0].with_suffix(".json").read_text())
    assert sidecar["prompt"] == "кот" and sidecar["made_by"] == "emojich-bot" and "codes" in sidecar
    assert sidecar["mask_method"] in ("unet", "contour") and sidecar["confidence"] is not None

    lineage = trace(stickers[0], root, verify_items=False)
    assert not lineage.breaks, [link.problem for link in lineage.breaks]
    kinds = [link.kind for link in lineage.links]
    assert kinds[0] == "sticker" and "generated-image" in kinds and "checkpoint" in kinds
    generated = next(link for link in lineage.links if link.kind == "generated-image")
    assert generated.facts["prompt"] == "кот" and generated.path.startswith("data/bot/jobs/")
    checkpoint = next(link for link in lineage.links if link.kind == "checkpoint")
    assert checkpoint.sha256 == sidecar["checkpoint_sha256"]
    # The command line agrees, and an edited bot sticker is named as such.
    assert (
        run(
            [sys.executable, "-m", "emojich.cli", "lineage", str(stickers[0]), "--no-items"], cwd=root
        ).returncode
        == 0
    )
    stickers[0].write_bytes(stickers[0].read_bytes() + b"\0")
    assert "sticker-modified" in trace(stickers[0], root, verify_items=False).break_kinds
