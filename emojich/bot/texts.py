"""Everything the bot says, in one place: users write Russian captions, so the bot speaks Russian."""

from __future__ import annotations

# The captions every help text and `emojich generate --help` suggest: ones the installed demo
# model draws (it learnt the catalogue's captions by heart and cannot compose new ones), so a
# newcomer's first try works. The only place they are written; change them here.
EXAMPLE_CAPTIONS = ("снеговик", "кошка", "флаг Японии", "синий кролик")


def _quoted(captions: tuple[str, ...]) -> str:
    return ", ".join(f"«{caption}»" for caption in captions)


EXAMPLE = f"«{EXAMPLE_CAPTIONS[0]}»"
EXAMPLES = _quoted(EXAMPLE_CAPTIONS)

HELP = (
    "Я рисую эмодзи-стикеры по подписи на русском языке.\n\n"
    "/newpack Название — начать новый набор стикеров\n"
    f"Затем пришлите подпись, например: {EXAMPLES}. Я нарисую несколько вариантов, "
    "вы выберете один и эмодзи к нему, и стикер появится в наборе.\n\n"
    "/status — ваше место в очереди\n"
    "/mypacks — ваши наборы\n"
    "/cancel — отменить текущую подпись\n"
    "/help — эта справка"
)
START = "Привет! " + HELP

ASK_TITLE = "Как назвать набор? Пришлите название (до 64 символов)."
TITLE_EMPTY = "Название не может быть пустым. Пришлите название набора."
TITLE_LONG = "Название длиннее 64 символов. Пришлите покороче."
PACK_STARTED = "Набор «{title}» начат. Пришлите подпись к первому стикеру, например: " + EXAMPLE + "."
NO_PACK = "Сначала начните набор: /newpack Название"

CAPTION_EMPTY = f"Подпись пустая. Опишите стикер словами, например: {EXAMPLE}."
CAPTION_ONLY_EMOJI = f"В подписи только эмодзи. Опишите стикер словами, например: {EXAMPLE}."
CAPTION_LONG = (
    "Подпись слишком длинная: {tokens} токенов, а модель читает не больше {max_tokens}. Сократите её."
)
LATIN_NOTE = (
    "Заметка: подпись латиницей. Модель училась на русских подписях, так что результат может удивить."
)
NOT_TEXT = "Я понимаю только текст. Пришлите подпись словами, а не файл или картинку."
UNKNOWN_COMMAND = "Не знаю такой команды. Список команд: /help"
STALE_BUTTON = "Эта кнопка уже не действует."
INTERNAL_ERROR = "Что-то пошло не так. Попробуйте ещё раз чуть позже."

QUEUED_NOW = "Подпись принята: «{caption}». Уже рисую варианты, это займёт {eta}."
QUEUED = "Подпись принята: «{caption}». Вы {place}-й в очереди, ожидание {eta}. /status — узнать место."
YOUR_TURN = "Ваша очередь подошла: рисую «{caption}»."
BUSY = "Я ещё рисую вашу прошлую подпись «{caption}». Дождитесь её или отмените: /cancel"
QUOTA = "На сегодня лимит исчерпан: {quota} подписей в день. Приходите завтра!"
QUEUE_FULL = "Сейчас очень много желающих: в очереди {waiting} подписей. Попробуйте через несколько минут."
FAILED = "Не получилось нарисовать «{caption}». Попробуйте ещё раз или другую подпись."
# The one status message of a job being drawn, edited as it goes and deleted when the candidates come.
PROGRESS = "Рисую «{caption}»… {percent} %"
PROGRESS_LEFT = "Рисую «{caption}»… {percent} % · осталось {left}"
PROGRESS_FINISHING = "Рисую «{caption}»… почти готово"  # sampled; decoding and upscaling remain
PROGRESS_ENDED = "«{caption}»: рисование закончено."  # only where Telegram refused to delete it

CANDIDATES = "Варианты для «{caption}». Выберите один:"
REGENERATE = "🔄 Ещё варианты"
SKIP = "Пропустить"
SAME_AGAIN = (
    "Для «{caption}» модель каждый раз рисует одно и то же: новые варианты вышли бы такими же, "
    "поэтому я их не рисую и в лимит это не идёт. Выберите вариант выше или пришлите другую подпись."
)
DROP_ASK = (
    "Варианты для «{old}» ещё ждут выбора. Нарисовать «{new}» вместо них? "
    "Тогда варианты для «{old}» пропадут."
)
KEEP_CANDIDATES = "Оставить варианты"
DRAW_NEW = "Рисовать новую"
KEPT = "Хорошо, «{new}» не рисую. Варианты для «{old}» ждут выбора выше."
PICKED = "Вы выбрали вариант {number}."
SKIPPED = "Пропустили. Пришлите другую подпись или /cancel."
ASK_EMOJI = "Какой эмодзи подходит стикеру? Пришлите от 1 до 20 эмодзи или выберите предложенный:"
EMOJI_TEXT = "Пришлите только эмодзи, например 😺 или 😺👍."
EMOJI_COUNT = "Нужно от 1 до 20 эмодзи."
MAKING = "Делаю стикер…"
STICKER_DONE = "Готово! Стикер в наборе «{title}»: https://t.me/addstickers/{name}\nПришлите следующую подпись или /cancel."
SET_FULL = "В наборе уже 120 стикеров — это предел. Начните новый: /newpack Название"
STICKER_FAILED = "Не получилось добавить стикер: {reason}. Попробуйте ещё раз."

STATUS_NONE = "Сейчас у вас нет подписей в работе. В очереди всего: {waiting}."
STATUS_RUNNING = "Рисую вашу подпись «{caption}» прямо сейчас."
STATUS_QUEUED = "Ваша подпись «{caption}»: {place}-я в очереди, ожидание {eta}."
STATUS_READY = "Варианты для «{caption}» готовы — выберите один выше."
STATUS_QUOTA = "Сегодня использовано {used} из {quota} подписей."

CANCELLED = "Отменено. Начать заново: /newpack Название"
NOTHING_TO_CANCEL = "Отменять нечего."

MYPACKS_NONE = "У вас пока нет наборов. Начните: /newpack Название"
MYPACKS_HEAD = "Ваши наборы:"
MYPACK_LINE = "• «{title}» — {count} стик. — https://t.me/addstickers/{name}"
MYPACK_EMPTY_LINE = "• «{title}» — пока пустой"


def eta(seconds: float) -> str:
    """A wait as a person says it: to the second while short, coarser as it grows."""
    if seconds < 1.5:
        return "около секунды"
    if seconds < 10:
        return f"около {round(seconds)} с"
    if seconds < 60:
        return f"около {round(seconds / 5) * 5} с"
    return f"около {round(seconds / 60)} мин"


def left(seconds: float) -> str:
    """What is left of a job, for its progress line: coarser as it grows, so the line changes only
    when the news is worth an edit."""
    if seconds < 10:
        return f"~{max(1, round(seconds))} с"
    if seconds < 60:
        return f"~{round(seconds / 5) * 5} с"
    return f"~{round(seconds / 60)} мин"


def progress(caption: str, done: int, total: int, seconds_left: float | None) -> str:
    """The progress line for `done` of `total` steps. Percents are floored, so the line never says
    100 % while steps remain; once all are done it says «почти готово» (decoding is left)."""
    if done >= total:
        return PROGRESS_FINISHING.format(caption=caption)
    percent = done * 100 // total
    if seconds_left is None:
        return PROGRESS.format(caption=caption, percent=percent)
    return PROGRESS_LEFT.format(caption=caption, percent=percent, left=left(seconds_left))
