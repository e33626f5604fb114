"""``run_as``: the loader reads the names (policy default, per-step override); the host resolves
them: unknown accounts and a non-root agent are load errors with file and field."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from agent.policy.loader import load_dir, load_text
from agent.policy.model import Policy, RunAs
from agent.runas import RunAsError, check_policies, cwd_problem, environment, resolve

NO_SUCH_USER = "stanch-no-such-user"


def policy(remediation_extra: str = "", step_extra: str = "", name: str = "web") -> str:
    return f"""
apiVersion: stanch.dev/v1
kind: Policy
metadata: {{name: {name}}}
spec:
  checks: {{flag: {{type: file, path: /run/flag}}}}
  rule: {{when: {{check: flag, metric: exists, op: "<", value: 1}}}}
  remediation:
{remediation_extra}
    steps:
      - name: first
        run: [touch, /run/flag]
      - name: second
        run: [id, -u]
{step_extra}
"""


def parse(text: str) -> Policy:
    policies, errors = load_text(text, "policies/web.yaml")
    assert errors == [], errors
    return policies[0]


def test_no_run_as_runs_as_the_agent() -> None:
    assert [s.run_as for s in parse(policy()).steps] == [None, None]


@pytest.mark.parametrize(
    ("written", "user", "group"),
    [
        ("www-data", "www-data", None),
        ("'www-data:adm'", "www-data", "adm"),
        ("{user: postgres, group: ssl-cert}", "postgres", "ssl-cert"),
        ("'65534'", "65534", None),
    ],
)
def test_policy_default_applies_to_every_step(written: str, user: str, group: str | None) -> None:
    p = parse(policy(remediation_extra=f"    run_as: {written}"))
    assert [s.run_as for s in p.steps] == [RunAs(user, group, "spec.remediation.run_as")] * 2


def test_a_step_overrides_the_policy_default() -> None:
    p = parse(policy("    run_as: app", "        run_as: root"))
    assert p.steps[0].run_as == RunAs("app", None, "spec.remediation.run_as")
    assert p.steps[1].run_as == RunAs("root", None, "spec.remediation.steps[1].run_as")


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("'bad user'", "'bad user' is not a user or group name"),
        ("'app:'", "'' is not a user or group name"),
        ("[app]", "expected a user name, 'user:group' or {user: ..., group: ...}"),
        ("{user: app, grp: x}", "unknown key 'grp'"),
    ],
)
def test_bad_run_as_syntax(written: str, problem: str) -> None:
    _, errors = load_text(policy(f"    run_as: {written}"), "policies/web.yaml")
    assert any(
        str(e).startswith("policies/web.yaml: spec.remediation.run_as") and problem in str(e)
        for e in errors
    ), errors


def test_resolve_gives_uid_gid_groups_and_home() -> None:
    nobody = pwd.getpwnam("nobody")
    account = resolve(RunAs("nobody"), euid=0)
    assert (account.uid, account.gid) == (nobody.pw_uid, nobody.pw_gid)
    assert set(account.groups) == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert 0 not in account.groups  # never root's supplementary groups
    assert environment(account) == {"HOME": nobody.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}
    assert resolve(RunAs(str(nobody.pw_uid)), euid=0).name == "nobody"


def test_unknown_user_or_group() -> None:
    with pytest.raises(RunAsError, match=f"no user '{NO_SUCH_USER}' on this host"):
        resolve(RunAs(NO_SUCH_USER), euid=0)
    with pytest.raises(RunAsError, match="no group 'stanch-no-such-group' on this host"):
        resolve(RunAs("nobody", "stanch-no-such-group"), euid=0)


def test_a_non_root_agent_cannot_switch_but_may_name_itself() -> None:
    nobody = pwd.getpwnam("nobody")
    with pytest.raises(RunAsError, match="the agent runs as uid 4242, not root"):
        resolve(RunAs("nobody"), euid=4242)
    assert resolve(RunAs("nobody"), euid=nobody.pw_uid).uid == nobody.pw_uid


def test_check_policies_reports_file_and_field() -> None:
    bad = parse(policy(step_extra=f"        run_as: {NO_SUCH_USER}"))
    good = parse(policy("    run_as: nobody", name="ok"))
    kept, errors = check_policies([bad, good], euid=0)
    assert kept == [good]
    assert [str(e) for e in errors] == [
        f"policies/web.yaml: spec.remediation.steps[1].run_as: no user '{NO_SUCH_USER}' "
        "on this host; create it or change run_as"
    ]
    kept, errors = check_policies([good], euid=4242)
    assert kept == [] and "not root" in str(errors[0])


def test_load_dir_resolves_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(policy(step_extra=f"        run_as: {NO_SUCH_USER}"))
    (tmp_path / "ok.yaml").write_text(policy("    run_as: nobody", name="ok"))
    plain = load_dir(tmp_path)  # bundle builds and reviews: names only
    assert sorted(p.name for p in plain.policies) == ["ok", "web"] and plain.errors == []
    if os.geteuid() != 0:
        pytest.skip("resolving run_as: nobody needs a root agent")
    host = load_dir(tmp_path, host_accounts=True)
    assert [p.name for p in host.policies] == ["ok"]
    assert host.failed_files == {str(tmp_path / "web.yaml")}
    assert "spec.remediation.steps[1].run_as: no user" in str(host.errors[0])


def test_cwd_problem(tmp_path: Path) -> None:
    nobody = resolve(RunAs("nobody"), euid=0)
    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    assert cwd_problem("/", nobody) is None
    problem = cwd_problem(str(closed / "inner"), nobody)
    assert problem is not None and "user 'nobody' cannot enter" in problem
    assert "(mode 0700)" in problem
    root = resolve(RunAs("root"), euid=0)
    assert cwd_problem(str(closed / "inner"), root) is None
    assert "No such file" in (cwd_problem(str(tmp_path / "gone"), root) or "")
