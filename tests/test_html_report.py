"""report.html: checked as parsed HTML against a recorded run, and in a real headless Chromium (integration)."""

from __future__ import annotations

import base64
import copy
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
from html import unescape as html_unescape
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import pytest

from lab.report import cast, html, redact, renderers, write_reports

# the record as verify.json of schema 1 held it (a plain dict): the page is rendered from its upgrade, so
# every case here also proves that lab.report renders an old run
FIXTURE = Path(__file__).parent / "fixtures" / "verify-bookworm-v1.json"
HOSTILE = "<script>alert(1)</script>"
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "-----END OPENSSH PRIVATE KEY-----\n")
MATRIX = [  # fix, expected, observed, verdict: what the fixture's run found
    ("baseline", "failing", "failing", "✓ fails, as the bug predicts (reproduced)"),
    ("pam-systemd", "failing", "failing", "✓ still fails, as measured for this target"),
    ("pam-cgfs", "running", "running", "✓ runs, as expected"),
    ("cgm", "running", "running", "✓ runs, as expected"),
    ("systemd-run", "failing", "failing", "✓ still fails, as measured for this target"),
    ("baseline-restored", "failing", "failing", "✓ fails, as the bug predicts (reproduced)"),
]
ARTIFACT = Path(__file__).resolve().parent.parent / ".artifacts" / "html-report.png"
LOADING_TAGS = {"script": "src", "link": "href", "img": "src", "iframe": "src", "audio": "src", "video": "src",
                "source": "src", "embed": "src", "object": "data", "track": "src", "image": "href", "use": "href"}


@pytest.fixture
def record() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture
def fake_player(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in player bundle, so the unit tests do not depend on npm (one with a hostile '</script>')."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / html.PLAYER_JS).write_text('var AsciinemaPlayer = {create: function () { return "</script>"; }};\n')
    (bundle / html.PLAYER_CSS).write_text(".ap-player { color: red; }\n")
    monkeypatch.setattr(html, "PLAYER_DIR", bundle)
    return bundle


class Page(HTMLParser):
    """What the tests read from a page: tags with attributes, the matrix rows, text by element id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[str, list[str]]] = []  # (class, cells) of table#matrix's body
        self.by_id: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the open elements
        self._texts: dict[str, list[str]] = {}
        self._matrix = self._body = False
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        self.by_id = {k: "".join(v) for k, v in self._texts.items()}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "table" and a.get("id") == "matrix":
            self._matrix = True
        elif self._matrix and tag == "tbody":
            self._body = True
        elif self._body and tag == "tr":
            self.rows.append((a.get("class", ""), []))
        elif self._body and tag == "td":
            self._cell = []
        if tag not in {"br", "meta", "link", "img", "input", "hr"}:
            self._open.append((tag, a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tbody":
            self._body = False
        elif tag == "table":
            self._matrix = False
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, ident in self._open:
            if ident:
                self._texts.setdefault(ident, []).append(data)


def stopped_after_cgm(record: dict) -> dict:
    """The record as if the presenter had stopped after cgm (the engine's own shape for it)."""
    rec = copy.deepcopy(record)
    rec["fixes"] = [f for f in rec["fixes"] if f["id"] != "systemd-run"]
    rec["baseline_restored"] = None
    rec["steps"] = [s for s in rec["steps"] if not s["id"].startswith(("systemd-run:", "baseline-restored:"))]
    rec.update(stopped="cgm", not_run=["systemd-run", "baseline-restored"])
    return rec


def test_registered_as_report_html() -> None:
    assert renderers()["html"] == ("report.html", html.render)


def test_page_loads_nothing_from_outside(record: dict, fake_player: Path) -> None:
    text = html.render(record)
    page = Page(text)
    for tag, attrs in page.tags:
        target = attrs.get(LOADING_TAGS.get(tag, ""), "") or attrs.get("srcset", "") or attrs.get("poster", "")
        assert not target.lower().startswith(("http:", "https:", "//")), f"<{tag}> loads {target}"
        if tag == "a" and attrs.get("href", "").startswith(("http:", "https:")):
            assert "noreferrer" in attrs.get("rel", "")
    assert "@import" not in text and not [t for t in ("url(http", "url('http", 'url("http') if t in text]
    links = [a["href"] for tag, a in page.tags if tag == "a" and a.get("href", "").startswith("http")]
    assert links == record["scenario"]["sources"]


def test_matrix_has_every_try_with_its_outcome(record: dict, fake_player: Path) -> None:
    page = Page(html.render(record))
    assert [(cells[0], cells[2], cells[3], cells[4]) for _, cells in page.rows] == MATRIX
    rows = [record["baseline"], *record["fixes"], record["baseline_restored"]]
    assert [cells[1] for _, cells in page.rows] == [row["title"] for row in rows]
    assert {cls for cls, _ in page.rows} == {"ok"}
    bad = copy.deepcopy(record)
    next(f for f in bad["fixes"] if f["id"] == "pam-cgfs").update(ok=False, observed="failing")
    bad["ok"] = False
    rows = Page(html.render(bad)).rows
    assert [cls for cls, _ in rows] == ["ok", "ok", "not-ok", "ok", "ok", "ok"]
    assert rows[2][1][3:] == ["failing", "✗ fails, but expected: runs"]


def test_page_has_the_whole_story(record: dict, fake_player: Path) -> None:
    text = html.render(record)
    page = Page(text)
    assert record["title"] in html_unescape(text.split("<h1>", 1)[1].split("</h1>", 1)[0])
    assert "✓ every step met its expectation" in page.by_id["verdict"]
    assert "<code>sudo -u dbusr lxc-start</code>" in text  # the explanation's `code` spans
    versions = text.split('id="versions"', 1)[1].split("</section>", 1)[0]
    assert all(v in versions for v in record["versions"]["text"].splitlines())
    evidence = page.by_id["evidence"]
    assert "labadmin$ sudo -u dbusr cat /proc/self/cgroup" in evidence
    assert text.count('<td class="same"><strong>') == 28  # 14 identical lines in each of the 2 columns
    tries = page.by_id["tries"]
    start = next(s for s in record["steps"] if s["id"] == "baseline:start")
    assert f"{start['user']}$ {start['command']}" in " ".join(tries.split())
    assert "Received container state" in page.by_id["step-baseline:start"]
    assert "expected to fail: ✓ as expected" in page.by_id["step-baseline:start"]
    assert "step-baseline:teardown" not in page.by_id  # plumbing is counted, not shown
    assert "Plumbing not shown" in page.by_id["try-baseline"]


def test_hostile_text_is_escaped(record: dict, fake_player: Path) -> None:
    rec = copy.deepcopy(record)
    rec["title"] = HOSTILE
    rec["scenario"]["explanation"] += f"\n\n`{HOSTILE}` and {HOSTILE}"
    rec["scenario"]["sources"].append("javascript:alert(1)")
    rec["fixes"][0]["title"] = HOSTILE
    next(s for s in rec["steps"] if s["id"] == "pam-cgfs:start")["stdout"] += HOSTILE + "\n"
    next(s for s in rec["steps"] if s["id"] == "cgm:apply")["command"] = HOSTILE
    rec["evidence"][0]["columns"][0]["output"] += HOSTILE + "\n"
    rec["error"] = HOSTILE
    text = html.render(rec)
    assert HOSTILE not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'href="javascript:' not in text
    page = Page(text)
    assert HOSTILE in page.by_id["verdict"] and HOSTILE in page.by_id["step-pam-cgfs:start"]
    assert [tag for tag, a in page.tags if tag == "script" and not a.get("src") and a.get("type") is None] == \
        ["script"], "only the page's own player script runs inline (the hostile player bundle goes in as data:)"


def test_cast_is_inlined_and_the_player_too(record: dict, fake_player: Path) -> None:
    text = html.render(record)
    start = text.index('<script type="application/json" id="cast-data">') + len(
        '<script type="application/json" id="cast-data">')
    data = json.loads(text[start:text.index("</script>", start)])
    assert data == cast.render(record)
    scripts = [a["src"] for tag, a in Page(text).tags if tag == "script" and a.get("src")]
    assert len(scripts) == 1 and scripts[0].startswith("data:text/javascript;base64,")
    assert "</script>" in base64.b64decode(scripts[0].split(",", 1)[1]).decode()
    assert ".ap-player { color: red; }" in text
    assert "AsciinemaPlayer.create({data: cast}" in text and 'id="player-missing"' not in text


def test_stopped_run_says_so(record: dict, fake_player: Path) -> None:
    page = Page(html.render(stopped_after_cgm(record)))
    assert "■ stopped by the presenter after cgm; baseline restored" in page.by_id["verdict"]
    assert "Not run: systemd-run, baseline-restored." in page.by_id["verdict"]
    assert [cells[0] for _, cells in page.rows] == ["baseline", "pam-systemd", "pam-cgfs", "cgm"]
    errored = copy.deepcopy(record)
    errored.update(ok=False, error="vagrant up failed: the domain is gone")
    verdict = Page(html.render(errored)).by_id["verdict"]
    assert "✗ the run broke off: vagrant up failed: the domain is gone" in verdict
    assert "The run ended with an error:vagrant up failed: the domain is gone" in verdict
    kept = copy.deepcopy(record)
    kept.update(ok=False, kept_failing="pam-cgfs")
    assert "Kept pam-cgfs as it failed" in Page(html.render(kept)).by_id["verdict"]


def test_private_keys_are_redacted(record: dict, fake_player: Path) -> None:
    leaky = copy.deepcopy(record)
    next(s for s in leaky["steps"] if s["id"] == "cgm:apply")["stdout"] += KEY
    leaky["error"] = KEY
    text = html.render(leaky)
    assert "BEGIN OPENSSH" not in text and "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" not in text
    assert "[private key redacted]" in text
    assert redact(KEY).strip() in json.loads(text.split('id="cast-data">', 1)[1].split("</script>", 1)[0])


def test_without_the_player_the_page_says_what_is_missing(record: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html, "PLAYER_DIR", tmp_path / "not-installed")
    text = html.render(record)
    page = Page(text)
    missing = " ".join(page.by_id["player-missing"].split())
    assert "player is missing" in missing and "./setup.sh" in missing and "npm ci" in missing
    assert str(html.PLAYER_PACKAGE) in missing
    assert not [a for tag, a in page.tags if tag == "script"], "no player, no script"
    assert len(page.rows) == len(MATRIX) and "Received container state" in page.by_id["tries"]
    assert 'download="verify.cast"' in text


# --- integration: the page in a real headless Chromium (Debian's), driven over the DevTools protocol ---


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._to = os.pipe()
        self._from, from_browser = os.pipe()

        def fds() -> None:  # in the child: the pipe ends become fds 3 and 4 (inheritable), whatever they were
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([executable, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=fds, close_fds=False,
                                     start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self.stderr: list[bytes] = []
        self.events: list[dict] = []
        self._replies: dict[int, dict] = {}
        self._next = 0
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cv:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: object) -> dict:
        """Send one command and wait for its result; AssertionError on a protocol error or timeout."""
        self._next += 1
        ident = self._next
        msg: dict = {"id": ident, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        with self._cv:
            if not self._cv.wait_for(lambda: ident in self._replies or self.proc.poll() is not None, timeout):
                raise AssertionError(f"chromium did not answer {method} within {timeout} s")
            reply = self._replies.pop(ident, None)
        assert reply is not None, f"chromium exited ({self.proc.returncode}) during {method}: {self.log()}"
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def wait_event(self, method: str, after: int = 0, timeout: float = 30) -> dict:
        """The first event of that kind from events[after:] on (waiting for it)."""
        with self._cv:
            found = self._cv.wait_for(lambda: next((e for e in self.events[after:] if e["method"] == method), None),
                                      timeout)
        assert found, f"no {method} within {timeout} s"
        return found

    def log(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")[-3000:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", timeout=10)
            self.proc.wait(timeout=10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session started for this browser only
            self.proc.wait(timeout=10)
        finally:
            os.close(self._to)
            os.close(self._from)


def page_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console.error/assert and error log entries (failed loads included) of the page."""
    errors = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                             for a in p.get("args", [])))
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return errors


PLAY_CHECK = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  for (let i = 0; i < 40 && !window.labPlayer; i++) await sleep(250);
  const player = window.labPlayer;
  if (!player) return {error: "window.labPlayer is not set: the player did not start"};
  await player.play();
  const samples = [];
  const until = Date.now() + 10000;
  while (Date.now() < until) {
    await sleep(250);
    samples.push(player.getCurrentTime());
    if (samples.length >= 6 && samples[samples.length - 1] >= 1.2) break;
  }
  await player.pause();
  await player.seek("50%");  // for the screenshot: the terminal halfway through the run
  for (let i = 0; i < 20 && !player.el.innerText.includes("$ "); i++) await sleep(250);
  return {samples, duration: player.getDuration(), text: player.el.innerText};
})()"""


@pytest.mark.integration
def test_report_in_headless_chromium(record: dict, tmp_path: Path) -> None:
    """Open report.html from disk in Chromium: no console errors, nothing but file:/data: loaded, the matrix
    as expected, the recording plays (its time advances), and a screenshot to look at."""
    executable = shutil.which("chromium")
    if not executable:
        pytest.fail("chromium is not installed: ./setup.sh --tests installs it (apt-get install chromium)")
    if html.player_assets() is None:
        pytest.fail(f"the asciinema player is not installed in {html.PLAYER_DIR}: run ./setup.sh "
                    f"(or npm ci in {html.PLAYER_PACKAGE})")
    run = tmp_path / "reports" / record["run"]
    run.mkdir(parents=True)
    shutil.copy(FIXTURE, run / "verify.json")
    (report,) = write_reports(run, ["html"])
    assert report.name == "report.html"

    browser = Browser(executable, tmp_path / "profile")
    try:
        tab = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=tab, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=2000, deviceScaleFactor=1,
                     mobile=False)
        seen = len(browser.events)
        browser.call("Page.navigate", session, url=report.as_uri())
        browser.wait_event("Page.loadEventFired", after=seen)

        played = browser.call("Runtime.evaluate", session, timeout=60, expression=PLAY_CHECK, awaitPromise=True,
                              returnByValue=True)
        assert "exceptionDetails" not in played, played
        played = played["result"]["value"]
        assert "error" not in played, played["error"]
        times = played["samples"]
        assert times and all(b >= a for a, b in pairwise(times)), times
        assert times[-1] >= 1.2 and times[-1] > times[0], f"the player's time did not advance: {times}"
        assert 5 < played["duration"] <= record["seconds"] + 1, played["duration"]  # pauses over 3 s shortened
        assert "labadmin$" in played["text"], played["text"]

        dom = browser.call("Runtime.evaluate", session, expression="document.documentElement.outerHTML",
                           returnByValue=True)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", session, format="png")["data"]
        requests = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
        errors = page_errors(browser.events)
    finally:
        browser.close()

    png = tmp_path / "html-report.png"
    png.write_bytes(base64.b64decode(shot))
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copy(png, ARTIFACT)
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000

    assert errors == [], "\n".join(errors)
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == [], requests
    page = Page(dom)
    assert [(cells[0], cells[2], cells[3], cells[4]) for _, cells in page.rows] == MATRIX
    assert {cls for cls, _ in page.rows} == {"ok"}
    assert "every step met its expectation" in page.by_id["verdict"]
    assert 'id="player-missing"' not in dom
