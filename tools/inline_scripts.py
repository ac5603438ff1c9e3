"""Fill an HTML template's `<!-- inline: PATH -->` markers with the scripts fetched by npm_fetch.py.

    python tools/inline_scripts.py plots/template.html .venv/share/emojich/npm .venv/share/emojich/plots.html

PATH is `<package>/<file>` under the npm folder. The result is the `dvc plots show` template: the
chart libraries sit inside the page itself, so the page needs no network and no files beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

MARKER = re.compile(r"<!-- inline: (?P<path>[\w./@-]+) -->")
# dvc-render fills these by plain text replacement over the whole page, scripts included.
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")


class InlineError(Exception):
    pass


def script_tag(path: str, source: str) -> str:
    if "</script" in source.lower():
        raise InlineError(f"{path}: contains '</script', which would end an inline script early")
    found = [placeholder for placeholder in DVC_PLACEHOLDERS if placeholder in source]
    if found:
        raise InlineError(f"{path}: contains {found[0]}, which DVC would replace inside the script")
    return f"<script>/* {path} */\n{source}\n</script>"


def inline(template: str, npm_dir: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        path = match.group("path")
        file = npm_dir / path
        if ".." in Path(path).parts or not file.is_file():
            raise InlineError(f"{file}: not found; run `make setup`")
        return script_tag(path, file.read_text(encoding="utf-8"))

    if not MARKER.search(template):
        raise InlineError("the template has no <!-- inline: PATH --> marker")
    return MARKER.sub(replace, template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("npm_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        template = args.template.read_text(encoding="utf-8")
        page = inline(template, args.npm_dir)
    except (InlineError, OSError) as error:
        print(f"inline_scripts: {error}", file=sys.stderr)
        return 2
    if args.out.is_file() and args.out.read_text(encoding="utf-8") == page:
        return 0  # up to date: not rewritten, so make and DVC see no change
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, args.out)
    print(f"{args.out}: {len(page):,} characters, {len(MARKER.findall(template))} scripts inlined")
    return 0


if __name__ == "__main__":
    sys.exit(main())
