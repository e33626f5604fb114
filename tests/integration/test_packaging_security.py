"""The shipped packaging turns security on, and the code accepts it: what ``install.sh`` runs for
a control plane (``opsctl pki init``, the bootstrap admin token) parses with the real parsers and,
run against a temporary directory instead of /etc, gives a control plane that the unit's own
command line starts with mutual TLS, whose bootstrap token works from opsctl; the agent's example
``control_plane.tls`` blocks (VM and Kubernetes) load with the agent's config loader; the
Kubernetes control plane's arguments parse and its ports agree with the enrollment default."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cp_process import REPO, ServerProcess

from agent.config import parse_config
from agent.fleet.tls import enrollment_address
from controlplane import server_config, token_cli, transport
from controlplane.opsctl import build_parser

PACKAGING = REPO / "packaging"
UNIT = PACKAGING / "systemd" / "stanch-controlplane.service"
ENV_FILE = PACKAGING / "config" / "controlplane.env"
K8S = PACKAGING / "kubernetes"
CP_ETC = "/etc/stanch-cp"


# ---- install.sh --dry-run ----------------------------------------------------------------------


def dry_run(*extra: str) -> list[list[str]]:
    """The commands ``install.sh --dry-run`` prints (``printf %q``-quoted, so shlex splits them
    as bash would). The dry run only reads the machine: it looks for /etc/stanch-cp files."""
    if Path(CP_ETC).exists():
        pytest.skip(f"{CP_ETC} exists on this machine: the dry run would describe an upgrade")
    done = subprocess.run(
        ["bash", str(PACKAGING / "install.sh"), "--dry-run", "--only-controlplane", *extra],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]


def find(commands: list[list[str]], *words: str) -> list[str]:
    found = [c for c in commands if all(w in c for w in words)]
    assert len(found) == 1, (words, commands)
    return found[0]


def test_install_makes_the_pki_once_and_a_bootstrap_admin_token() -> None:
    commands = dry_run("--san", "cp.example.com", "--san", "10.0.0.5")
    init = find(commands, "pki", "init")
    assert init[0] == "/opt/stanch/bin/opsctl"
    args = build_parser().parse_args(init[1:])
    assert args.dir == Path(f"{CP_ETC}/pki") and args.san == ["cp.example.com", "10.0.0.5"]
    assert not args.force  # never replace a CA that hosts trust
    assert find(commands, "chmod", f"{CP_ETC}/pki/ca.key")[0:2] == ["chmod", "0600"]
    create = find(commands, "tokens", "create")
    assert create[:3] == ["/opt/stanch/bin/stanch-cp", "tokens", "create"]
    assert create[-2:] == [">", f"{CP_ETC}/bootstrap-admin.token"]
    token = token_cli.offline_parser().parse_args(create[2:-2])
    assert (token.name, token.role, token.expires) == ("bootstrap-admin", "admin", "7d")
    assert token.db == "/var/lib/stanch-cp/controlplane.db"  # the unit's STANCH_CP_DB
    assert not any("STANCH_ADMIN_TOKEN" in word for c in commands for word in c)


def test_install_names_the_host_and_loopback_by_default() -> None:
    init = find(dry_run(), "pki", "init")
    sans = build_parser().parse_args(init[1:]).san
    assert {"localhost", "127.0.0.1", "::1"} <= set(sans) and len(sans) == len(set(sans))


# ---- the unit's command line, as systemd would build it ----------------------------------------


def env_assignments(lines: list[str]) -> dict[str, str]:
    """``KEY=value`` lines (EnvironmentFile= syntax: the value optionally quoted)."""
    out = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value[1:-1] if value[:1] == value[-1:] == '"' else value
    return out


def unit_values(key: str) -> list[str]:
    prefix = f"{key}="
    return [ln[len(prefix) :] for ln in UNIT.read_text().splitlines() if ln.startswith(prefix)]


def exec_start(env: dict[str, str], creds: Path) -> list[str]:
    """ExecStart expanded: ``${VAR}`` is one word, ``$VAR`` splits on whitespace, ``%d`` is the
    credentials directory."""
    argv: list[str] = []
    for word in unit_values("ExecStart")[0].split():
        word = word.replace("%d", str(creds))
        if word.startswith("${"):
            argv.append(env[word[2:-1]])
        elif word.startswith("$"):
            argv.extend(env[word[1:]].split())
        else:
            argv.append(word)
    return argv


def test_packaged_control_plane_serves_mtls_and_the_bootstrap_token_works(
    tmp_path: Path,
) -> None:
    ServerProcess.create(tmp_path)  # writes an assignment key (cp/) and bundle keys (trust/)
    etc = tmp_path / "etc"
    commands = dry_run("--san", "localhost", "--san", "127.0.0.1")

    def local(argv: list[str]) -> list[str]:
        return [a.replace(CP_ETC, str(etc)) for a in argv]

    # install.sh's own commands, with /etc/stanch-cp moved under tmp.
    init = local(find(commands, "pki", "init"))
    done = subprocess.run(
        [sys.executable, "-m", "controlplane.opsctl", *init[1:]],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pki = etc / "pki"
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600, key
    env = {
        **env_assignments([w for v in unit_values("Environment") for w in shlex.split(v)]),
        **env_assignments(ENV_FILE.read_text().splitlines()),
    }
    assert "STANCH_ADMIN_TOKEN" not in env
    db = tmp_path / "cp.db"
    create = find(commands, "tokens", "create")[1:-2]
    create[create.index("--db") + 1] = str(db)
    minted = subprocess.run(
        [sys.executable, "-m", "controlplane.server", *create],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    bootstrap = minted.stdout.strip()

    # The credentials systemd would hand over (LoadCredential=NAME:PATH), under their names.
    creds = tmp_path / "credentials"
    creds.mkdir()
    sources = {"/etc/stanch-cp/assignment.key": tmp_path / "cp" / "assign.key"}
    for spec in unit_values("LoadCredential"):
        name, _, source = spec.partition(":")
        shutil.copy(sources.get(source) or Path(source.replace(CP_ETC, str(etc))), creds / name)
    argv = exec_start({**env, "STANCH_CP_DB": str(db)}, creds)
    assert argv[:3] == ["/opt/stanch/bin/python", "-m", "controlplane.server"]
    argv = [a.replace(f"{CP_ETC}/trust", str(tmp_path / "trust")) for a in argv]

    args = server_config.parser().parse_args(argv[3:])
    assert not args.insecure and args.pki_dir == creds and args.db == str(db)
    tls = transport.from_args(args)
    assert tls is not None and tls.ca is not None  # mTLS, and it can enroll and renew
    assert args.listen == "0.0.0.0:7443" and tls.enroll_listen == "0.0.0.0:7444"
    assert tls.enroll_listen == enrollment_address(args.listen)  # what agents assume

    # Start it as the unit would, on loopback ports of its own.
    ports = ["--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0"]
    log = (tmp_path / "cp.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, *argv[1:], *ports, "--metrics-listen", "127.0.0.1:0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    try:
        stdout = proc.stdout
        assert stdout is not None
        lines = (
            concurrent.futures.ThreadPoolExecutor(1)
            .submit(lambda: [stdout.readline().decode() for _ in range(2)])
            .result(timeout=30)
        )
        enroll = [ln for ln in lines if "enrollment on" in ln]
        assert enroll and any("listening on" in ln for ln in lines), lines
        ops_env = {
            k: v for k, v in os.environ.items() if not k.startswith("STANCH_") or k == "STANCH_HOME"
        }
        ops_env |= {
            "STANCH_ADDR": "127.0.0.1:" + enroll[0].rsplit(":", 1)[1].strip(),
            "STANCH_CA": str(pki / "ca.crt"),
            "STANCH_TOKEN": bootstrap,
        }

        def opsctl(*words: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "controlplane.opsctl", *words],
                cwd=REPO, env=ops_env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        # Day 1: the bootstrap admin makes a token for a person, which is audited.
        alice = opsctl("tokens", "create", "--name", "alice", "--role", "operator")
        assert alice.returncode == 0, alice.stderr
        listed = opsctl("tokens", "list")
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"bootstrap-admin\s+admin", listed.stdout), listed.stdout
        assert re.search(r"alice\s+operator", listed.stdout), listed.stdout
        verified = opsctl("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        ops_env["STANCH_TOKEN"] = "stk_forged.secret"
        assert opsctl("tokens", "list").returncode != 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# ---- the agent's examples ----------------------------------------------------------------------


def uncomment(text: str, marker: str, depth: int = 1) -> str:
    """The commented ``control_plane:`` block from ``marker`` on, uncommented ``depth`` times
    (2 also turns on the optional keys commented inside it), with ``policy_source: bundle``."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == marker)
    indent = lines[start].index("#")
    out = lines[:start]
    for line in lines[start:]:
        if not line.strip().startswith("#"):
            break
        body = line[:indent] + line[indent + 2 :]
        if depth == 2:
            inner = re.match(r"^(\s+)# (\w+: .*)$", body)
            if inner and not body.strip().startswith("# control"):
                body = inner.group(1) + inner.group(2)
        out.append(body)
    return re.sub(r"policy_source: directory", "policy_source: bundle", "\n".join(out))


@pytest.mark.parametrize("depth", [1, 2], ids=["as-shipped", "every-optional-key"])
def test_the_vm_agent_example_loads_with_tls(depth: int) -> None:
    text = uncomment((PACKAGING / "config" / "agent.yaml").read_text(), "# control_plane:", depth)
    config = parse_config(yaml.safe_load(text), "agent.yaml")
    cp = config.control_plane
    assert cp is not None and not cp.insecure and cp.tls is not None
    assert cp.tls.ca == Path("/etc/stanch/ca.crt")
    assert cp.tls.enroll_token_file == Path("/etc/stanch/enroll-token")
    if depth == 2:
        assert cp.tls.cert == Path(config.state_dir) / "tls" / "agent.crt"
        assert cp.tls.key == Path(config.state_dir) / "tls" / "agent.key"
        assert cp.tls.enroll_address == enrollment_address(cp.address)
        assert cp.tls.server_name == cp.address.rsplit(":", 1)[0]


def k8s_docs(name: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]


def test_the_kubernetes_agent_example_enrolls_from_the_secret() -> None:
    config_map = k8s_docs("agent-config.yaml")[0]
    data = config_map["data"]
    assert isinstance(data, dict)
    config = parse_config(yaml.safe_load(uncomment(data["agent.yaml"], "# control_plane:")), "cm")
    cp = config.control_plane
    assert cp is not None and cp.tls is not None and cp.tls.enroll_token_file is not None
    daemonset = k8s_docs("agent-daemonset.yaml")[0]
    pod = daemonset["spec"]["template"]["spec"]  # type: ignore[index]
    init = pod["initContainers"][0]
    script = init["command"][-1]
    assert str(cp.tls.enroll_token_file) in script  # the init container writes what it reads
    assert f"{config.state_dir}/tls/agent.crt" in script  # skips once the node has a certificate
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert cp.tls.ca.parent == Path(mounts["enroll"])
    assert Path(mounts["state"]) == Path(config.state_dir)
    secret = next(v for v in pod["volumes"] if v["name"] == "enroll")["secret"]
    assert secret["optional"] is True  # a standalone agent still starts without it


def test_the_kubernetes_control_plane_serves_mtls_and_enrollment() -> None:
    deployment = next(d for d in k8s_docs("controlplane.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["command"][1:] == ["-m", "controlplane.server"]
    args = server_config.parser().parse_args(container["args"])
    assert not args.insecure and args.pki_dir == Path("/etc/stanch-cp/pki")
    assert args.enroll_listen == enrollment_address(args.listen)
    assert "STANCH_ADMIN_TOKEN" not in str(container.get("env", ""))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == int(args.listen.rsplit(":", 1)[1])
    assert ports["enroll"] == int(args.enroll_listen.rsplit(":", 1)[1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(mounts["pki"]) == args.pki_dir
    service = next(d for d in k8s_docs("controlplane.yaml") if d["kind"] == "Service")
    names = {p["name"] for p in service["spec"]["ports"]}  # type: ignore[index]
    assert {"grpc", "enroll"} <= names
    # The kubelet's gRPC probe has no TLS: probing the mTLS port with it would always fail.
    for probe in ("livenessProbe", "readinessProbe"):
        assert "grpc" not in container[probe], probe
