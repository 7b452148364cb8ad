"""What the presenter sees while lab.verify runs: each try's why, the command as typed, salient
output, and a verdict against the expectation ("fails, as the bug predicts" is green); --step
pauses before each try on a single key press."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from lab.core.console import console
from lab.render.plan import Plan, PlannedEvidence, PlannedTry
from lab.run.judge import lines
from lab.run.record import Revert, RunRecord, StepRecord, TryRecord
from lab.run.verdict import outcome_words, try_words, verdict

MAX_LINES = 8


class Stop(Exception):
    """The presenter pressed q: the run stops after restoring the baseline."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


def salient(text: str, limit: int = MAX_LINES) -> list[str]:
    """The last non-empty lines of an output, where the error usually is."""
    return [line for line in text.splitlines() if line.strip()][-limit:]


def read_key() -> str:
    """One key press from the terminal, without waiting for Enter (termios cbreak mode). A key typed
    before the prompt counts: cbreak is set with TCSANOW, not tty's default TCSAFLUSH, which throws
    away what was typed ahead (seen in a test: Enter sent right after the prompt was lost, and the
    run waited for ever)."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        return sys.stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


class Live:
    """The live presenter of one run of a plan."""

    def __init__(self, plan: Plan, step_mode: bool = False) -> None:
        self.plan = plan
        self.step_mode = step_mode
        if step_mode and not sys.stdin.isatty():
            console.print("[yellow]--step needs a terminal to read key presses; running through without pauses[/]")
            self.step_mode = False

    def versions(self, text: str) -> None:
        """Open the run on the terminal: a rule with the scenario's title and the target's, then the versions
        command's output (text; its last MAX_LINES non-empty lines) on one dim line, " | " between."""
        console.rule(f"[bold]{escape(self.plan.title)}[/] [dim]on {escape(self.plan.target_title)}[/]")
        console.print(f"[dim]guest: {escape(' | '.join(salient(text)))}[/]")

    def evidence(self, ev: PlannedEvidence, steps: list[StepRecord], holds: bool) -> None:
        """Show one evidence block: its title and why, a table with one column per command (steps, one per
        command of ev, at least one) and the lines every column shows in yellow, then whether the outputs
        are as ev.expect wants (holds)."""
        console.print(f"\n[bold]Evidence[/] — {escape(ev.title)}")
        if ev.why:
            console.print(f"[dim]{escape(ev.why)}[/]")
        table = Table(show_lines=False, expand=True)
        columns = [lines(s.stdout + s.stderr) for s in steps]
        common = set(columns[0]).intersection(*columns[1:]) if columns else set()
        for s in steps:
            table.add_column(f"{s.user}$ {s.command}", overflow="fold")
        for i in range(max(len(c) for c in columns)):
            cells = [c[i] if i < len(c) else "" for c in columns]
            table.add_row(*(f"[yellow]{escape(x)}[/]" if x and x in common else escape(x) for x in cells))
        console.print(table)
        wanted = {"same": "identical (marked lines)", "differ": "different", "any": "shown"}[ev.expect]
        mark = "[green]✓" if holds else "[red]✗"
        console.print(f"{mark} the outputs are {'' if holds else 'not '}{wanted}[/]"
                      + ("" if holds else ": the bug's precondition does not hold here"))

    def pause(self, next_id: str, after: str) -> None:
        """--step: name the next try (next_id) and wait for one key press; q (or Q) raises Stop(after),
        after naming what ran last; any other key goes on. Returns at once without step mode."""
        if not self.step_mode:
            return
        console.print(f"[dim]next: {escape(next_id)} — Enter or space to go on, q to stop and restore: [/]", end="")
        key = read_key()
        console.print()
        if key.lower() == "q":
            raise Stop(after)

    def try_header(self, label: str, t: PlannedTry, announce: str = "") -> None:
        """A panel opening try t: its title, why and expected outcome (with the outcome's words), headed
        announce, else "baseline: the bug" for the baseline, else "<kind> <label>" (label: the try's id as
        recorded)."""
        head = announce or ("baseline: the bug" if label == "baseline" else f"{t.kind} {label}")
        console.print(Panel(f"[bold]{escape(t.title)}[/]\n[dim]{escape(t.why)}[/]\n"
                            f"expected: {escape(t.expected)} ({escape(outcome_words(self.plan.outcomes, t.expected))})",
                            title=escape(head), title_align="left", expand=True))

    def before(self, command: str, user: str) -> None:
        """The prompt "user$" and the command as the admin would type it, before it runs."""
        console.print(f"[cyan]{escape(user)}$[/] {escape(command)}")

    def after(self, step: StepRecord) -> None:
        """What a step printed (the last MAX_LINES non-empty lines of stdout and stderr, each cut at 200
        characters), then its exit code and seconds (the guest's own seconds too, when measured)."""
        for line in salient(step.stdout + "\n" + step.stderr):
            console.print(f"   [dim]{escape(line[:200])}[/]")
        guest = f", guest {step.guest_seconds:.2f}s" if step.guest_seconds is not None else ""
        console.print(f"   [dim]exit {step.exit_code} in {step.seconds:.2f}s{guest}[/]")

    def outcome(self, run: RunRecord, rec: TryRecord) -> None:
        """A try's result: the observed fields, its last three log notes, the first signature seen, then ✓
        (green) or ✗ (red) with the verdict's words (lab.run.verdict.try_words)."""
        shown = ", ".join(f"{k}={v}" for k, v in rec.fields.items())
        if shown:
            console.print(f"   [dim]observed: {escape(shown[:300])}[/]")
        for line in rec.notes[-3:]:
            console.print(f"   [dim]log: {escape(line[:200])}[/]")
        if rec.signature_matched:
            console.print(f"   [dim]signature seen: {escape(rec.signature_matched[0])}[/]")
        colour, mark = ("green", "✓") if rec.ok else ("red", "✗")
        console.print(f"[{colour}]{mark} {escape(try_words(run, rec))}[/]\n")

    def isolation(self, isolation: str, note: str) -> None:
        """Say once how tries are kept apart (and why, when it is not what the scenario asked)."""
        if isolation == "snapshot":
            console.print("[dim]isolation: every try starts from the baseline snapshot[/]")
        else:
            console.print("[dim]isolation: the scenario's teardown and each fix's revert between tries[/]")
        if note:
            console.print(f"[yellow]{escape(note)}[/]")

    def reverted_snapshot(self, done: Revert) -> None:
        """One dim line for a return to the baseline snapshot: before which try, how, its seconds and the
        seconds until the shells answered again."""
        console.print(f"[dim]↺ baseline snapshot restored for {escape(done.before)} ({done.how}, {done.seconds:.1f}s; "
                      f"shells again after {done.until_shells:.1f}s)[/]")

    def reverted(self, fix_id: str, step: StepRecord) -> None:
        """After a fix's revert script (step): a dim "reverted" line, or a red line with its stderr when it
        failed."""
        if step.ok:
            console.print(f"   [dim]reverted {escape(fix_id)}[/]")
        else:
            console.print(f"[red]✗ could not revert {escape(fix_id)}: {escape(step.stderr.strip())}[/]")

    def kept(self, try_id: str, lab: str, snapshot: bool) -> None:
        """--keep-failing: try_id was left as it failed on lab (by name); says what was left undone, how to
        look around (lab.ssh) and how the lab gets back to its baseline (snapshot: the run's isolation)."""
        state = "nothing reverted or torn down" if snapshot else "fix applied, nothing torn down"
        back = ("the next lab.verify starts from the baseline snapshot (or: invoke lab.reset)" if snapshot else
                "the next lab.verify reverts every fix first (or: invoke lab.reset)")
        console.print(f"[bold yellow]■ kept {escape(try_id)} as it failed ({state}).[/]\n"
                      f"  look around: invoke lab.ssh --name {escape(lab)}\n"
                      f"  back to the baseline: {back}")

    def written(self, path: Path) -> None:
        """One dim line naming a report file the run wrote."""
        console.print(f"[dim]report: {escape(str(path))}[/]", soft_wrap=True)

    def summary(self, rec: RunRecord) -> None:
        """The fix matrix and the run's verdict (lab.run.verdict), with its notes."""
        table = Table(title=f"{rec.scenario.id} on {rec.target}: fix matrix", expand=False)
        for col in ("try", "expected", "observed", "verdict"):
            table.add_column(col)
        for row in rec.tries:
            table.add_row(escape(row.id), escape(row.expected), escape(row.observed),
                          "[green]as expected[/]" if row.ok else
                          ("[yellow]kept as it failed[/]" if row.kept else "[red]NOT as expected[/]"))
        console.print(table)
        v = verdict(rec)
        colour = {"met": "green", "stopped": "yellow", "kept": "yellow"}.get(v.state, "red")
        console.print(f"[bold {colour}]{escape(v.headline)}[/] ({rec.seconds:.1f}s, isolation: {rec.isolation})")
        for note in v.notes:
            console.print(f"[{colour}]  {escape(note)}[/]")
