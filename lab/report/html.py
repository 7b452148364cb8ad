"""report.html: one run as a self-contained page: verdict, fix matrix, evidence, every try's steps and the recording."""

from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path

from lab.core import resources
from lab.report.cast import HEIGHT, WIDTH
from lab.report.cast import render as render_cast
from lab.report.rows import fix_rows, is_plumbing, output_lines, redacted, steps_of, try_facts, verdict

# The asciinema player, installed by setup.sh (npm ci) and inlined into every page (lab.core.resources).
PLAYER_PACKAGE = resources.PLAYER_PACKAGE
PLAYER_DIR = resources.PLAYER_BUNDLE
PLAYER_JS, PLAYER_CSS = "asciinema-player.min.js", "asciinema-player.css"
SAFE_LINK = re.compile(r"https?://[^\s\"'<>]+\Z")
_INLINE = re.compile(r"(`+)(.+?)\1|\*\*(.+?)\*\*", re.DOTALL)

STYLE = """
:root { --ok: #1a7f37; --ok-bg: #e7f5eb; --bad: #c62828; --bad-bg: #fdecea; --dim: #5f6368; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328;
       margin: 0 auto; padding: 1.5rem 2rem 4rem; max-width: 78rem; }
h1 { font-size: 1.6rem; margin: 0 0 .4rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
code, pre.block { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
:not(pre) > code { background: #f3f4f6; padding: .05rem .3rem; border-radius: 4px; }
pre.block { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem;
            margin: .3rem 0; overflow: auto; max-height: 26rem; white-space: pre; }
pre.cmd { background: #24292f; color: #f0f3f6; border-color: #24292f; margin-bottom: 0; white-space: pre-wrap;
          overflow-wrap: anywhere; }
pre.cmd .prompt { color: #7ee2ff; }
pre.out { margin-top: 0; border-top: 0; border-radius: 0 0 6px 6px; }
.meta { color: var(--dim); margin: 0; }
nav { margin: .8rem 0 0; font-size: .9rem; } nav a { margin-right: .9rem; }
table { border-collapse: collapse; margin: .4rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .55rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr.ok td { background: var(--ok-bg); } tr.not-ok td { background: var(--bad-bg); }
tr.ok td.result { color: var(--ok); font-weight: 600; } tr.not-ok td.result { color: var(--bad); font-weight: 600; }
.wide { overflow-x: auto; }
table.evidence td { font: 12.5px/1.35 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre; }
table.evidence td.same { background: #fff8c5; font-weight: 700; }
.verdict { border-radius: 8px; padding: .7rem 1rem; margin: 1rem 0; font-weight: 600; }
.verdict.ok { background: var(--ok-bg); color: var(--ok); border: 1px solid #a5d6b1; }
.verdict.not-ok { background: var(--bad-bg); color: var(--bad); border: 1px solid #f1aeb5; }
.verdict.stopped { background: #fff4e5; color: #8a4b00; border: 1px solid #f5c88a; }
.verdict p { margin: .3rem 0 0; font-weight: 400; color: #1f2328; }
.try { border-left: 4px solid var(--line); padding: .1rem 0 .3rem 1rem; margin: 1.6rem 0; }
.try.ok { border-left-color: var(--ok); } .try.not-ok { border-left-color: var(--bad); }
.step { margin: .9rem 0; }
.step .title { font-weight: 600; margin-bottom: .2rem; }
.step .exit { font-size: .9rem; color: var(--dim); }
.step.ok .mark, .ok > .mark { color: var(--ok); } .step.not-ok .mark, .not-ok > .mark { color: var(--bad); }
.step.not-ok pre.cmd { border-color: var(--bad); box-shadow: 0 0 0 2px var(--bad); }
.note { color: var(--dim); font-style: italic; }
.missing { background: #fff4e5; border: 1px solid #f5c88a; border-radius: 6px; padding: .6rem .9rem; }
#player { max-width: 62rem; }
"""

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


def header(record: dict) -> list[str]:
    """The page's title, the run's facts (scenario, target, provider...) and the navigation, as HTML lines."""
    sc = record.get("scenario") or {}
    facts = [f"scenario {code(sc.get('id', ''))}", f"lab {code(record.get('name', ''))}",
             f"target {code(record.get('target', ''))} ({escape(record.get('target_title', ''))})",
             f"provider {code(record.get('provider', ''))}"]
    if record.get("cgroup_layout"):
        facts.append(f"cgroup layout {code(record['cgroup_layout'])}")
    if record.get("admin_user"):
        facts.append(f"admin user {code(record['admin_user'])}")
    facts.append(f"run {code(str(record.get('run', '')))} started {escape(record.get('started_at', ''))}")
    return [f"<header><h1>cgroup lab: {escape(record.get('title', ''))}</h1>",
            f'<p class="meta">{", ".join(facts)}</p>',
            '<nav><a href="#verdict">verdict</a><a href="#matrix-section">fix matrix</a>'
            '<a href="#recording">recording</a><a href="#scenario">what this shows</a>'
            '<a href="#evidence">evidence</a><a href="#tries">tries</a></nav></header>']


def scenario(record: dict) -> list[str]:
    """The scenario's explanation, note, sources (as links) and the guest's versions, as HTML lines."""
    sc = record.get("scenario") or {}
    out = ['<section id="scenario"><h2>What this shows</h2>', prose(sc.get("explanation", ""))]
    if sc.get("note"):
        out.append(f"<p><strong>On this target:</strong> {inline(sc['note'])}</p>")
    if sc.get("sources"):
        out.append("<p>Sources:</p><ul>" + "".join(f"<li>{link(u)}</li>" for u in sc["sources"]) + "</ul>")
    text = (record.get("versions") or {}).get("text", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        out += ['<h3 id="versions">Versions in the guest</h3>',
                "<ul>" + "".join(f"<li>{code(line)}</li>" for line in lines) + "</ul>"]
    return [*out, "</section>"]


def evidence(record: dict) -> list[str]:
    """Each evidence's outputs side by side, lines common to all columns highlighted, as HTML lines."""
    items = [ev for ev in record.get("evidence") or [] if ev.get("columns")]
    if not items:
        return []
    out = ['<section id="evidence"><h2>Evidence</h2>']
    for n, ev in enumerate(items, start=1):
        columns = ev["columns"]
        listings = [[x.strip() for x in c.get("output", "").splitlines() if x.strip()] for c in columns]
        common = set(listings[0]).intersection(*listings[1:])
        title = ev.get("title", "") if len(items) == 1 else f"{n}. {ev.get('title', '')}"
        out.append(f"<h3>{escape(title)}</h3>")
        if ev.get("why"):
            out.append(f"<p>{inline(ev['why'])}</p>")
        head = "".join(f"<th>{escape(c.get('title', ''))}<br>{code(c.get('user', '') + '$ ' + c.get('command', ''))}"
                       "</th>" for c in columns)
        body = []
        for i in range(max(len(x) for x in listings)):
            cells = [x[i] if i < len(x) else "" for x in listings]
            body.append("<tr>" + "".join(f'<td class="same"><strong>{escape(c)}</strong></td>' if c and c in common
                                         else f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
        out.append(f'<div class="wide"><table class="evidence"><thead><tr>{head}</tr></thead>'
                   f"<tbody>{''.join(body)}</tbody></table></div>")
        wanted = {"same": "identical (highlighted lines)", "differ": "different"}.get(ev.get("expect", "any"), "shown")
        holds = bool(ev.get("holds"))
        out.append(f'<p class="{klass(holds)}"><span class="mark">{mark(holds)}</span> The outputs are '
                   f"{'' if holds else 'not '}{escape(wanted)}: the bug's precondition "
                   f"{'holds' if holds else 'does not hold here'}.</p>")
    return [*out, "</section>"]


def step_block(step: dict) -> str:
    """One step: `user$ command`, its output, exit code and whether that was as expected, as HTML."""
    expectation = "expected to fail" if step.get("expected") == "fail" else "expected to succeed"
    ok = bool(step.get("ok"))
    lines = output_lines(step)
    out = [f'<div class="step {klass(ok)}" id="step-{escape(step["id"])}">',
           f'<div class="title">{escape(step.get("title") or step["id"])}</div>',
           f'<pre class="block cmd"><span class="prompt">{escape(step.get("user", ""))}$</span> '
           f'{escape(step.get("command", ""))}</pre>']
    if lines:
        out.append(f'<pre class="block out">{escape(chr(10).join(lines))}</pre>')
    out.append(f'<div class="exit">exit {escape(str(step.get("exit_code")))} in {step.get("seconds", 0):.2f} s — '
               f'{expectation}: <span class="mark">{mark(ok)}</span> {"as expected" if ok else "not as expected"}'
               "</div>")
    if step.get("note"):
        out.append(f'<div class="note">{escape(step["note"])}</div>')
    return "\n".join([*out, "</div>"])


def plumbing_note(steps: list[dict]) -> str:
    """The count of the plumbing steps not shown (and those that failed), as HTML ("" when there are none)."""
    plumbing = [s for s in steps if is_plumbing(s["id"])]
    if not plumbing:
        return ""
    kinds = ", ".join(s["id"].rsplit(":", 1)[-1] for s in plumbing)
    failed = [s["id"] for s in plumbing if not s.get("ok")]
    note = f"Plumbing not shown: {len(plumbing)} steps ({escape(kinds)}), "
    note += f"<strong>failed: {escape(', '.join(failed))}</strong>." if failed else "all ok."
    return f'<p class="note">{note}</p>'


def try_section(record: dict, row: dict, steps: list[dict]) -> list[str]:
    """One try (baseline or fix): why, expected outcome, its story steps, observed outcome and facts, as HTML lines."""
    ok = bool(row.get("ok"))
    out = [f'<section class="try {klass(ok)}" id="try-{escape(row["id"])}">',
           f"<h3>{code(row['id'])}: {escape(row.get('title', ''))}</h3>"]
    if row.get("why"):
        out.append(f"<p>{inline(row['why'])}</p>")
    out.append(f"<p>Expected outcome: <strong>{escape(row.get('expected', ''))}</strong>.</p>")
    out += [step_block(s) for s in steps if not is_plumbing(s["id"])]
    out.append(plumbing_note(steps))
    out.append(f'<p class="{klass(ok)}">Observed: <strong>{escape(row.get("observed", ""))}</strong> (expected '
               f'<strong>{escape(row.get("expected", ""))}</strong>) — <span class="mark">{mark(ok)}</span> '
               f"{escape(verdict(record, row))}.</p>")
    facts = try_facts(row, code, lambda text: f"<strong>{escape(text)}</strong>")
    out.append("<ul>" + "".join(f"<li>{fact}</li>" for fact in facts) + "</ul>")
    return [*out, "</section>"]


def tries(record: dict, rows: list[dict]) -> list[str]:
    """Every try in run order, then the story steps no try claims, as HTML lines."""
    out = ['<section id="tries"><h2>Each try, step by step</h2>']
    claimed = set()
    for row in rows:
        steps = steps_of(record, row["id"])
        claimed |= {s["id"] for s in steps}
        out += try_section(record, row, steps)
    shown_elsewhere = {"versions", *(i for ev in record.get("evidence") or [] for i in ev.get("steps", []))}
    others = [s for s in record.get("steps", []) if s["id"] not in claimed | shown_elsewhere
              and not is_plumbing(s["id"])]
    if others:
        out += ['<h3 id="other-steps">Other steps</h3>', *(step_block(s) for s in others)]
    return [*out, "</section>"]


def matrix(record: dict, rows: list[dict]) -> list[str]:
    """table#matrix: fix, title, expected, observed, verdict; each row of class ok or not-ok, as HTML lines."""
    out = ['<section id="matrix-section"><h2>Fix matrix</h2>',
           '<table id="matrix"><thead><tr><th>fix</th><th>title</th><th>expected</th><th>observed</th>'
           "<th>verdict</th></tr></thead><tbody>"]
    for row in rows:
        ok = bool(row.get("ok"))
        out.append(f'<tr class="{klass(ok)}" data-fix="{escape(row["id"])}">'
                   f'<td><a href="#try-{escape(row["id"])}">{code(row["id"])}</a></td>'
                   f"<td>{escape(row.get('title', ''))}</td><td>{escape(row.get('expected', ''))}</td>"
                   f"<td>{escape(row.get('observed', ''))}</td>"
                   f'<td class="result">{mark(ok)} {escape(verdict(record, row))}</td></tr>')
    if not rows:
        out.append('<tr class="not-ok"><td colspan="5">no try ran</td></tr>')
    return [*out, "</tbody></table></section>"]


def result(record: dict) -> list[str]:
    """#verdict: the run's verdict (stopped, kept failing, error, not run included), as HTML lines."""
    steps = record.get("steps", [])
    plumbing = sum(1 for s in steps if is_plumbing(s["id"]))
    ok = bool(record.get("ok"))
    head = "✓ every step met its expectation" if ok else "✗ some step did not meet its expectation"
    state = klass(ok)
    if record.get("stopped"):
        state = "stopped"
        head = (f"■ stopped by the presenter after {record['stopped']}; baseline restored — "
                + ("every step that ran met its expectation" if ok else "some step did not meet its expectation"))
    out = [f'<section id="verdict" class="verdict {state}">{escape(head)}',
           f"<p>{len(steps)} steps ({len(steps) - plumbing} shown, {plumbing} plumbing) in "
           f"{record.get('seconds', 0):.1f} s.</p>"]
    failed = [s["id"] for s in steps if not s.get("ok")]
    if failed:
        out.append("<p>Steps not as expected: " + ", ".join(
            f'<a href="#step-{escape(f)}">{code(f)}</a>' for f in failed) + ".</p>")
    if record.get("kept_failing"):
        out.append(f"<p>Kept {code(record['kept_failing'])} as it failed: the fix is still applied and nothing was "
                   "torn down; the next verify restores the baseline.</p>")
    if record.get("restored") is False:
        out.append("<p>The baseline did not come back after the fixes were reverted.</p>")
    if record.get("not_run"):
        out.append(f"<p>Not run: {', '.join(code(t) for t in record['not_run'])}.</p>")
    if record.get("error"):
        out.append(f'<p>The run ended with an error:</p><pre class="block error">{escape(record["error"])}</pre>')
    return [*out, "</section>"]


def player_assets(directory: Path | None = None) -> tuple[str, str] | None:
    """The asciinema player's (JS, CSS) from the installed npm package, or None when it is not installed."""
    where = directory or PLAYER_DIR
    try:
        return (where / PLAYER_JS).read_text(encoding="utf-8"), (where / PLAYER_CSS).read_text(encoding="utf-8")
    except OSError:
        return None


def script(js: str) -> str:
    """An inline <script>; code that could close the element early goes in as a data: URL instead."""
    if re.search(r"</script|<!--", js, re.IGNORECASE):
        return f'<script src="data:text/javascript;base64,{base64.b64encode(js.encode()).decode()}"></script>'
    return f"<script>{js}</script>"


def style(css: str) -> str:
    """An inline <style>; CSS that could close the element early goes in as a data: URL instead."""
    if re.search(r"</style|<!--", css, re.IGNORECASE):
        return f'<link rel="stylesheet" href="data:text/css;base64,{base64.b64encode(css.encode()).decode()}">'
    return f"<style>{css}</style>"


def json_for_script(value: object) -> str:
    """JSON that cannot end a <script> element: <, > and & as \\u escapes (ASCII only)."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def recording(record: dict) -> tuple[list[str], list[str]]:
    """The recording section and what goes in <head> (the player's CSS)."""
    text = render_cast(record)
    download = base64.b64encode(text.encode()).decode()
    out = ['<section id="recording"><h2>Recording</h2>',
           f'<p>The run replayed at the pace the guest took (pauses over 3 s shortened). '
           f'<a download="verify.cast" href="data:application/x-asciicast;base64,{download}">Save verify.cast</a> '
           "to play it in a terminal with <code>asciinema play verify.cast</code>.</p>"]
    assets = player_assets()
    if assets is None:
        out.append(f'<p class="missing" id="player-missing">The recording player is missing: the asciinema player '
                   f"was not found in {code(str(PLAYER_DIR))} when this page was made. Install it with "
                   f"{code('./setup.sh')}, or {code('npm ci')} in {code(str(PLAYER_PACKAGE))}, then write the reports "
                   "again (invoke lab.report). Everything else on this page is complete.</p>")
        return [*out, "</section>"], []
    js, css = assets
    head = [style(css)]
    cols, rows = WIDTH, HEIGHT
    out += ['<div id="player"></div>',
            f'<script type="application/json" id="cast-data">{json_for_script(text)}</script>',
            script(js), script(PLAYER_SCRIPT % {"cols": cols, "rows": rows}), "</section>"]
    return out, head


def render(record: dict) -> str:
    """The run's record (verify.json as a dict) -> the whole report page as HTML text, with nothing to fetch."""
    record = redacted(record)
    rows = fix_rows(record)
    player, head = recording(record)
    body = [*header(record), *result(record), *matrix(record, rows), *player, *scenario(record), *evidence(record),
            *tries(record, rows)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>cgroup lab: {escape(record.get('title', ''))} on {escape(record.get('target', ''))}</title>",
        f"<style>{STYLE}</style>", *head, "</head><body>", *body, "</body></html>", ""])

