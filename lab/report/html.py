"""report.html: one run as a self-contained page: verdict, fix matrix, evidence, every try's steps
and the recording. The page is the jinja2 template templates/report.html.j2 (autoescaped; the CSS
is templates/report.css), filled from the typed record and lab.run.verdict; nothing is fetched."""

from __future__ import annotations

import base64
import json
import re
from functools import cache
from html import escape
from pathlib import Path

import jinja2
from markupsafe import Markup

from lab.core import resources
from lab.report.cast import HEIGHT, WIDTH
from lab.report.cast import render as render_cast
from lab.report.rows import output_lines, redacted_record, try_summary
from lab.run.record import EvidenceRecord, RunRecord, StepRecord, TryRecord, coerce
from lab.run.verdict import try_words, verdict

# The asciinema player, installed by setup.sh (npm ci) and inlined into every page (lab.core.resources).
PLAYER_PACKAGE = resources.PLAYER_PACKAGE
PLAYER_DIR = resources.PLAYER_BUNDLE
PLAYER_JS, PLAYER_CSS = "asciinema-player.min.js", "asciinema-player.css"
SAFE_LINK = re.compile(r"https?://[^\s\"'<>]+\Z")
_INLINE = re.compile(r"(`+)(.+?)\1|\*\*(.+?)\*\*", re.DOTALL)
TEMPLATES = resources.REPORT_TEMPLATES_DIR
CSS_FILE = TEMPLATES / "report.css"



PLAYER_SCRIPT = """(function () {
  var cast = JSON.parse(document.getElementById("cast-data").textContent);
  var player = AsciinemaPlayer.create({data: cast}, document.getElementById("player"),
    {cols: %(cols)d, rows: %(rows)d, idleTimeLimit: 3, fit: "width", preload: true, terminalFontSize: "small"});
  window.labPlayer = player;
})();"""


def inline(text: str) -> str:
    """Markdown-ish text (`code` spans, **bold**) as escaped HTML; nothing else of the text is markup."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos:m.start()]))
        out.append(f"<code>{escape(m.group(2).strip())}</code>" if m.group(1) else
                   f"<strong>{escape(m.group(3))}</strong>")
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def prose(text: str) -> str:
    """Paragraphs (blank-line separated; '- ' lines become a list) of Markdown-ish text as HTML."""
    blocks = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in para.splitlines() if line.strip()]
        if not lines:
            continue
        if all(line.startswith("- ") for line in lines):
            blocks.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            blocks.append(f"<p>{inline(' '.join(lines))}</p>")
    return "\n".join(blocks)


def link(url: str) -> str:
    """An <a> for an http(s) URL (opened only when clicked); anything else as plain text."""
    if SAFE_LINK.match(url):
        return f'<a href="{escape(url)}" rel="noreferrer noopener">{escape(url)}</a>'
    return escape(url)


def mark(ok: bool) -> str:
    """✓ or ✗."""
    return "✓" if ok else "✗"


def klass(ok: object) -> str:
    """The CSS class for an outcome: ok or not-ok."""
    return "ok" if ok else "not-ok"


def code(text: str) -> str:
    """Text as an escaped <code> span."""
    return f"<code>{escape(text)}</code>"


def player_assets(directory: Path | None = None) -> tuple[str, str] | None:
    """The asciinema player's (JS, CSS) from the installed npm package, or None when it is not installed."""
    where = directory or PLAYER_DIR
    try:
        return (where / PLAYER_JS).read_text(encoding="utf-8"), (where / PLAYER_CSS).read_text(encoding="utf-8")
    except OSError:
        return None


def script(js: str) -> Markup:
    """An inline <script>; code that could close the element early goes in as a data: URL instead."""
    if re.search(r"</script|<!--", js, re.IGNORECASE):
        return Markup(f'<script src="data:text/javascript;base64,{base64.b64encode(js.encode()).decode()}"></script>')
    return Markup(f"<script>{js}</script>")


def style(css: str) -> Markup:
    """An inline <style>; CSS that could close the element early goes in as a data: URL instead."""
    if re.search(r"</style|<!--", css, re.IGNORECASE):
        return Markup(f'<link rel="stylesheet" href="data:text/css;base64,{base64.b64encode(css.encode()).decode()}">')
    return Markup(f"<style>{css}</style>")


def json_for_script(value: object) -> str:
    """JSON that cannot end a <script> element: <, > and & as \\u escapes (ASCII only)."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@cache
def environment() -> jinja2.Environment:
    """The report pages' jinja2 environment: autoescape on, StrictUndefined, and the filters that
    turn Markdown-ish scenario text into safe HTML (inline, prose, link)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(inline=lambda t: Markup(inline(t)), prose=lambda t: Markup(prose(t)),
                       link=lambda u: Markup(link(u)), kind_of=lambda step_id: step_id.rsplit(":", 1)[-1])
    return env


def stylesheet() -> str:
    """The report pages' CSS (templates/report.css)."""
    return CSS_FILE.read_text(encoding="utf-8")


STYLE = stylesheet()  # the CSS as text, for pages built elsewhere (lab.report.matrix)

ISOLATION_WORDS = {"snapshot": "every try started from the baseline snapshot",
                   "teardown": "tries were separated by the scenario's teardown and each fix's revert"}
KIND_WORDS = {"baseline": "the bug", "fix": "fix", "variant": "variant: another way to show the bug",
              "control": "control: must not show the bug", "restored": "the bug again, at the end"}


def expectation(step: StepRecord) -> str:
    """What a step's exit status was expected to be, in words."""
    return {"fail": "expected to fail", "any": "any exit status"}.get(
        step.expected, f"expected to {step.expected}" if step.expected.startswith("exit ") else "expected to succeed")


def listing(ev: EvidenceRecord) -> list[list[str]]:
    """Each column's non-empty output lines, stripped."""
    return [[x.strip() for x in c.output.splitlines() if x.strip()] for c in ev.columns]


def common_lines(listings: list[list[str]]) -> set[str]:
    """Lines every column shows."""
    return set(listings[0]).intersection(*listings[1:]) if listings else set()


def render(rec: RunRecord | dict) -> str:
    """The run's typed record -> the whole report page as HTML text, with nothing to fetch."""
    rec = coerce(rec)
    rec = redacted_record(rec)
    v = verdict(rec)
    claimed = {s.id for row in rec.tries for s in rec.steps_of(row.id)}
    shown_elsewhere = {"versions", *(i for ev in rec.evidence for i in ev.steps)}
    cast_text = render_cast(rec)
    assets = player_assets()

    def facts(row: TryRecord) -> list[Markup]:
        return [Markup(f) for f in try_summary(rec, row, code, lambda text: f"<strong>{escape(text)}</strong>")]

    return environment().get_template("report.html.j2").render(
        rec=rec, v=v, verdict_class={"met": "ok", "stopped": "stopped"}.get(v.state, "not-ok"),
        plumbing_count=sum(1 for s in rec.steps if s.plumbing), isolation_words=ISOLATION_WORDS[rec.isolation],
        others=[s for s in rec.steps if s.id not in claimed | shown_elsewhere and not s.plumbing],
        css=stylesheet(), player={"js": assets[0], "css": assets[1]} if assets else None,
        player_script=PLAYER_SCRIPT % {"cols": WIDTH, "rows": HEIGHT}, player_dir=str(PLAYER_DIR),
        player_package=str(PLAYER_PACKAGE), cast_b64=base64.b64encode(cast_text.encode()).decode(),
        cast_json=Markup(json_for_script(cast_text)), kind_words=KIND_WORDS,
        klass=klass, mark=mark, output_lines=output_lines, expectation=expectation, try_words=try_words,
        listing=listing, common_lines=common_lines, facts=facts, script=script, style=style)
