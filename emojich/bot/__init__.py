"""The Telegram bot: captions in, sticker sets out (`emojich bot`; needs the `bot` extra).

- `rules`: Telegram's set-name, emoji and size rules and the caption checks, as pure functions;
- `store`: users, packs, jobs and stickers in SQLite; `persistence`: PTB's conversation states there;
- `worker`: drawing and background removal in worker processes, through the library;
- `dispatch`: the generation queue; `progress`: the status message of a job being drawn;
- `maker`: from a pick to a sticker in a set;
- `handlers`: the conversation and commands; `app`: start-up, polling and the command line.

The top of the library: may import every part below it.
"""
