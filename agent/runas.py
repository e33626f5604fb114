"""``run_as``: resolve a policy's account on this host and check the agent can switch to it.

The policy names an account (``agent.policy.model.RunAs``); the host turns it into numbers here:
uid, primary gid (or the named group), the user's supplementary groups as ``initgroups(3)``
would set them (``os.getgrouplist``), and the home directory for ``HOME``. The child is then
started by ``subprocess`` with ``user=``, ``group=`` and ``extra_groups=``: without
``extra_groups`` it would keep root's supplementary groups, a quiet privilege leak.

When. ``check_policies`` runs when the agent loads policies, so a user missing on this host or an
agent that is not root is a load error naming the file and field. ``resolve`` runs again before
every step (accounts change; an agent that did not check at load must still never run the step
as root instead): a failure there fails the step before anything runs.

Only root can switch users. A non-root agent may still name its own user (nothing to switch).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.errors import FieldError, StanchError
from agent.policy.model import Policy, RunAs


class RunAsError(StanchError):
    """The account cannot be used on this host; the message says why and what to do."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary groups (initgroups semantics), primary gid included as getgrouplist does."""
    home: str


def resolve(run_as: RunAs, euid: int | None = None) -> Account:
    """The account for ``run_as`` on this host, or RunAsError."""
    try:
        entry = pwd.getpwuid(int(run_as.user)) if run_as.user.isdigit() else None
        entry = entry or pwd.getpwnam(run_as.user)
    except (KeyError, OverflowError):
        raise RunAsError(
            f"no user {run_as.user!r} on this host; create it or change run_as"
        ) from None
    gid = entry.pw_gid
    if run_as.group is not None:
        try:
            group = (
                grp.getgrgid(int(run_as.group)) if run_as.group.isdigit() else None
            ) or grp.getgrnam(run_as.group)
        except (KeyError, OverflowError):
            raise RunAsError(
                f"no group {run_as.group!r} on this host; create it or change run_as"
            ) from None
        gid = group.gr_gid
    me = os.geteuid() if euid is None else euid
    if me != 0 and entry.pw_uid != me:
        raise RunAsError(
            f"the agent runs as uid {me}, not root, so it cannot run commands as "
            f"{entry.pw_name!r}; run the agent as root or remove run_as"
        )
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Account(entry.pw_name, entry.pw_uid, gid, groups, entry.pw_dir or "/")


def check_policies(
    policies: Iterable[Policy], euid: int | None = None
) -> tuple[list[Policy], list[FieldError]]:
    """Split ``policies`` into those whose every ``run_as`` resolves here and load errors for
    the others (``file: spec.remediation.run_as: no user 'x' on this host ...``)."""
    good: list[Policy] = []
    errors: list[FieldError] = []
    for policy in policies:
        problems: dict[str, str] = {}
        for step in policy.steps:
            if step.run_as is None or step.run_as.path in problems:
                continue
            try:
                resolve(step.run_as, euid)
            except RunAsError as exc:
                problems[step.run_as.path] = str(exc)
        errors += [FieldError(policy.source, path, why) for path, why in problems.items()]
        if not problems:
            good.append(policy)
    return good, errors


def environment(account: Account) -> dict[str, str]:
    """What a login would set for the account: HOME, USER and LOGNAME."""
    return {"HOME": account.home, "USER": account.name, "LOGNAME": account.name}


def cwd_problem(
    path: str, account: Account, stat_: Callable[[str], os.stat_result] = os.stat
) -> str | None:
    """Why ``account`` cannot ``chdir`` into ``path``, or None. Every directory on the way needs
    search (x) permission for the account: a step would otherwise fail with a bare EACCES."""
    current = "/"
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) + 1):
        current = "/" + "/".join(parts[:i])
        try:
            st = stat_(current)
        except OSError as exc:
            return f"cwd {path}: {current}: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"cwd {path}: {current} is not a directory"
        if not _may_search(st, account):
            return (
                f"cwd {path}: user {account.name!r} cannot enter {current} "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); pick a directory it can reach"
            )
    return None


def _may_search(st: os.stat_result, account: Account) -> bool:
    if account.uid == 0:
        return True
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid or st.st_gid in account.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)
