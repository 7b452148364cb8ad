"""The judgement on recorded outputs: observe parsing, the scenario's rules, signatures, verdicts.
The observe outputs below were printed by the seed's observe.sh in real bookworm VMs."""

from __future__ import annotations

from lab.config import scenario as sc
from lab.remote.ssh import CommandResult
from lab.run import judge

SEED = sc.load("sudo-lxc-cgroups")
RULES = [r.model_dump() for r in SEED.model.observe.rules]
OUTCOMES = {k: v.model_dump() for k, v in SEED.model.outcomes.items()}

RUNNING_LIMITED = ("state=RUNNING\npid=1234\nmemory_cgroup=/user/dbusr/0/lxc.payload.mysql55\n"
                   "limit=268435456\nlimit_ok=yes\n--- lab.log\n")
RUNNING_UNLIMITED = ("state=RUNNING\npid=991\nunified_cgroup=/user.slice/user-1000.slice/session-3.scope\n"
                     "limit=max\nlimit_ok=no\n--- lab.log\n"
                     "lxc-start mysql55 WARN cgfsng - legacy_hierarchy_delegated: Legacy hierarchy not writable\n")
ABORTED = ("state=STOPPED\n--- lab.log\nlxc-start mysql55 20261129 ERROR cgfsng - cgfsng_setup_limits_legacy: "
           "Failed to setup limits for the \"memory\" controller. The controller seems to be unused\n"
           "lxc-start mysql55 20261129 ERROR start - lxc_spawn: Failed to setup cgroup limits for container\n")


def result(code: int, out: str = "", err: str = "") -> CommandResult:
    return CommandResult(command="x", user="labadmin", exit_code=code, stdout=out, stderr=err, seconds=0.1,
                         guest_seconds=0.05)


def test_observation_fields_and_notes() -> None:
    obs = judge.parse_observation(ABORTED)
    assert obs.fields == {"state": "STOPPED"}
    assert len(obs.notes) == 2 and "Failed to setup cgroup limits" in obs.notes[1]


def test_a_log_line_with_an_equals_sign_is_a_note_not_a_field() -> None:
    obs = judge.parse_observation("state=RUNNING\n---\nlxc.cgroup.memory.limit_in_bytes = 268435456\n")
    assert obs.fields == {"state": "RUNNING"} and obs.notes == ["lxc.cgroup.memory.limit_in_bytes = 268435456"]


def test_the_seed_rules_name_each_recorded_outcome() -> None:
    for text, code, want in ((RUNNING_LIMITED, 0, "running"), (RUNNING_UNLIMITED, 0, "unlimited"),
                             (ABORTED, 1, "failing")):
        fields = judge.observed_fields(judge.parse_observation(text), result(code))
        assert judge.classify(RULES, fields) == want


def test_rules_see_exit_code_and_output_and_first_match_wins() -> None:
    rules = [{"outcome": "no-bus", "when": {"output": "Failed to connect to bus"}},
             {"outcome": "works", "when": {"exit_code": "^0$"}},
             {"outcome": "broken"}]
    no_bus = judge.observed_fields(judge.Observation(), result(1, err="Failed to connect to bus: No medium found\n"))
    assert judge.classify(rules, no_bus) == "no-bus"
    assert judge.classify(rules, judge.observed_fields(judge.Observation(), result(0, out="running\n"))) == "works"
    assert judge.classify(rules, judge.observed_fields(judge.Observation(), result(3))) == "broken"
    assert judge.classify(rules[:2], judge.observed_fields(judge.Observation(), result(3))) == judge.UNCLASSIFIED


def test_a_failure_without_its_signature_is_not_the_bug() -> None:
    base = SEED.model.baseline
    sigs = sc.signatures(base, "bookworm")
    assert judge.matched_signatures(sigs, ["lxc-start: permission denied on something else"]) == []
    assert not judge.judge("failing", "failing", sigs, [])
    assert judge.judge("failing", "failing", sigs, [sigs[1]])
    assert not judge.judge("failing", "running", sigs, [sigs[1]])
    found = judge.matched_signatures(sigs, judge.parse_observation(ABORTED).notes)
    assert found == ["Failed to setup cgroup limits"]


def test_evidence_same_and_differ() -> None:
    admin = "0::/user.slice/user-1000.slice/session-3.scope\n"
    assert judge.evidence_holds("same", [admin, admin])
    assert not judge.evidence_holds("same", [admin, "0::/user.slice/user-1001.slice/session-9.scope\n"])
    assert judge.evidence_holds("differ", [admin, "0::/user.slice/user-1001.slice/session-9.scope\n"])
    assert not judge.evidence_holds("same", ["", ""]), "empty outputs prove nothing"


def test_per_target_values() -> None:
    fix = SEED.fix("bookworm-unified", "systemd-run")
    assert sc.expected(fix, "bookworm-unified") == "running" and sc.expected(fix, "bookworm") == "failing"
    pam = SEED.fix("bookworm", "pam-systemd")
    assert "modern logind" in sc.per_target(pam.why, "bookworm") and "cgmanager" in sc.per_target(pam.why, "trusty")
