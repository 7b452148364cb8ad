"""What the presenter sees while lab.verify runs: each step's why, command, salient output and a
verdict against the expectation ("fails, as the bug predicts" is green), and --step pauses."""

from __future__ import annotations

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from lab.console import console
from lab.remote import CommandResult
from lab.scenario import Observation, StepRecord, cgroup_lines, verdict_words
from lab.settings import Settings
from lab.targets import Fix, Outcome

MAX_LINES = 8


def salient(text: str, limit: int = MAX_LINES) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-limit:]


class Live:
    def __init__(self, settings: Settings, step_mode: bool = False) -> None:
        self.settings = settings
        self.step_mode = step_mode

    def versions(self, text: str) -> None:
        target = self.settings.target_data
        console.rule(f"[bold]{escape(target.title)}[/]")
        console.print(f"[dim]guest: {escape(' | '.join(salient(text)))}[/]")

    def evidence(self, admin: StepRecord, sudo: StepRecord, same: bool) -> None:
        s = self.settings
        console.print(f"\n[bold]1. Evidence[/] — {escape(sudo.why)}")
        table = Table(show_lines=False, expand=True)
        table.add_column(f"{s.admin_user}: cat /proc/self/cgroup", overflow="fold")
        table.add_column(f"{s.admin_user}: sudo -u {s.container_user} cat /proc/self/cgroup", overflow="fold")
        left, right = cgroup_lines(admin.stdout), cgroup_lines(sudo.stdout)
        common = set(left) & set(right)
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            mark = "[yellow]" if a in common and a else ""
            markb = "[yellow]" if b in common and b else ""
            table.add_row(f"{mark}{escape(a)}", f"{markb}{escape(b)}")
        console.print(table)
        if same:
            console.print(f"[green]✓ identical[/] (marked lines): "
                          f"{s.container_user} inherited {s.admin_user}'s cgroups")
        else:
            console.print("[red]✗ the listings differ: the bug's precondition does not hold here[/]")

    def pause(self, fix: Fix) -> None:
        if not self.step_mode:
            return
        from lab.verify import Stop

        answer = console.input(f"[dim]next: {escape(fix.id)} — Enter to go on, q to stop and restore: [/]")
        if answer.strip().lower().startswith("q"):
            raise Stop()

    def fix_header(self, label: str, title: str, why: str, expected: Outcome, announce: str = "") -> None:
        head = announce or ("baseline: the bug" if label == "baseline" else f"fix {label}")
        console.print(Panel(f"[bold]{escape(title)}[/]\n[dim]{escape(why)}[/]\nexpected: {expected.value}",
                            title=escape(head), title_align="left", expand=True))

    def before(self, id: str, title: str, command: str, user: str, why: str) -> None:
        console.print(f"[cyan]{escape(user)}$[/] {escape(command)}")

    def after(self, record: StepRecord) -> None:
        for line in salient(record.stdout + "\n" + record.stderr):
            console.print(f"   [dim]{escape(line[:200])}[/]")
        guest = f", guest {record.guest_seconds:.2f}s" if record.guest_seconds is not None else ""
        console.print(f"   [dim]exit {record.exit_code} in {record.seconds:.2f}s{guest}[/]")

    def outcome(self, fix: Fix, observed: Outcome, ok: bool, is_baseline: bool, obs: Observation,
                signatures: list[str]) -> None:
        colour = "green" if ok else "red"
        console.print(f"   container: {escape(obs.state)}"
                      + (f", memory limit {escape(obs.limit)}" if obs.limit else "")
                      + (f" in {escape(obs.cgroup)}" if obs.cgroup else ""))
        for line in obs.log[-3:]:
            console.print(f"   [dim]log: {escape(line[:200])}[/]")
        if signatures:
            console.print(f"   [dim]signature seen: {escape(signatures[0])}[/]")
        mark = "✓" if ok else "✗"
        console.print(f"[{colour}]{mark} {escape(verdict_words(fix, observed, ok, is_baseline))}[/]\n")

    def reverted(self, fix_id: str, result: StepRecord | CommandResult) -> None:
        ok = result.ok if isinstance(result, StepRecord) else result.succeeded
        if ok:
            console.print(f"   [dim]reverted {escape(fix_id)}[/]")
        else:
            console.print(f"[red]✗ could not revert {escape(fix_id)}: {escape(result.stderr.strip())}[/]")

    def summary(self, record: dict) -> None:
        table = Table(title=f"{record['target']}: fix matrix", expand=False)
        for col in ("fix", "expected", "observed", "verdict"):
            table.add_column(col)
        rows = [record.get("baseline"), *record.get("fixes", []), record.get("baseline_restored")]
        for row in rows:
            if not row:
                continue
            table.add_row(escape(row["id"]), row["expected"], row["observed"],
                          "[green]as expected[/]" if row["ok"] else "[red]NOT as expected[/]")
        console.print(table)
        if record["ok"]:
            console.print(f"[bold green]✓ every step met its expectation[/] ({record['seconds']:.1f}s)")
        else:
            console.print(f"[bold red]✗ some step did not meet its expectation[/] ({record['seconds']:.1f}s)")
