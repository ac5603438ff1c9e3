"""`dvc plots show` / `dvc plots diff` with the project's template: offline, each plot drawn once."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.pipeline import ROOT, dvc, run
from tools.inline_scripts import InlineError, inline

LIBRARIES = ("vega", "vega-lite", "vega-embed")


class _Scripts(HTMLParser):
    """Every <script>: its src attribute (or None) and its inline text."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[str | None, str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append((dict(attrs).get("src"), ""))
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            src, text = self.scripts[-1]
            self.scripts[-1] = (src, text + data)


def project_template() -> Path:
    """The template the project's own DVC config names, resolved as DVC does (from .dvc/)."""
    value = dvc("config", "plots.html_template", cwd=ROOT).stdout.strip()
    return (ROOT / ".dvc" / value).resolve()


def top_level_plot_ids() -> list[str]:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    return [next(iter(plot)) for plot in pipeline["plots"]]


def test_template_is_made_by_setup_with_the_pinned_libraries_inline() -> None:
    template = project_template()
    assert template.is_file(), f"{template}: run `make setup`"
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page
    assert "{scripts}" not in page  # where DVC would put its CDN <script src> tags
    pins = json.loads((ROOT / "plots/vega_packages.json").read_text(encoding="utf-8"))["packages"]
    assert [pin["name"] for pin in pins] == list(LIBRARIES)
    assert {pin["licence"] for pin in pins} == {"BSD-3-Clause"}
    for pin in pins:
        assert f"/* {pin['name']}/build/{pin['name']}.min.js */" in page


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        ("var a = '</script>';", "</script"),  # would end the inline script early
        ("var a = '{plot_divs}';", "{plot_divs}"),  # DVC would put the charts inside the script
        (None, "make setup"),  # not fetched
    ],
)
def test_inlining_refuses_what_would_break_the_page(tmp_path: Path, script: str | None, problem: str) -> None:
    if script is not None:
        (tmp_path / "lib").mkdir()
        (tmp_path / "lib/lib.js").write_text(script, encoding="utf-8")
    with pytest.raises(InlineError, match=re.escape(problem)):
        inline("<head><!-- inline: lib/lib.js --></head>{plot_divs}", tmp_path)


def test_inlining_puts_the_script_in_the_page(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/lib.js").write_text("var lib = 1;", encoding="utf-8")
    page = inline("<head><!-- inline: lib/lib.js --></head>{plot_divs}", tmp_path)
    assert page == "<head><script>/* lib/lib.js */\nvar lib = 1;\n</script></head>{plot_divs}"


def _check_page(page: str) -> None:
    parser = _Scripts()
    parser.feed(page)
    sources = [src for src, _ in parser.scripts if src is not None]
    assert not [src for src in sources if re.match(r"\s*(https?:)?//", src, re.IGNORECASE)], sources
    inline = "\n".join(text for src, text in parser.scripts if src is None)
    assert "vegaEmbed" in inline and "vegaLite" in inline  # the libraries themselves, not a link
    for plot_id in top_level_plot_ids():
        # One chart per plot id: a CSV drawn both as a stage plot and a top-level plot would add more.
        assert len(re.findall(rf"<div id = \"{re.escape(plot_id)}\"", page)) == 1, plot_id
    charts = len(re.findall(r"vegaEmbed\('#", page))
    assert charts == len(top_level_plot_ids()), f"{charts} charts"
    assert "reconstructions.png" in page and "sheet.png" in page  # the stages' image plots


@pytest.mark.slow
def test_plots_show_and_diff_work_offline_and_draw_each_plot_once(pipeline_copy: Path) -> None:
    dvc("config", "plots.html_template", str(project_template()), cwd=pipeline_copy)
    dvc("plots", "show", "-o", "shown", cwd=pipeline_copy)
    _check_page((pipeline_copy / "shown/index.html").read_text(encoding="utf-8"))
    dvc("plots", "diff", "-o", "diffed", cwd=pipeline_copy)
    _check_page((pipeline_copy / "diffed/index.html").read_text(encoding="utf-8"))


def test_dvc_plots_output_is_git_ignored() -> None:
    """`dvc plots show` writes dvc_plots/index.html by default; it must not show as untracked."""
    run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=ROOT)  # exit 1 when not ignored
