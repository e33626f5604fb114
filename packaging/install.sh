#!/usr/bin/env bash
# Install Stanch on a systemd host: a virtualenv under /opt/stanch, the units, default config.
#
#   sudo packaging/install.sh                      # the agent, from this checkout
#   sudo packaging/install.sh --controlplane       # the control plane too (or --only-controlplane)
#   sudo packaging/install.sh --from dist/stanch-0.1.0-py3-none-any.whl --no-start
#   sudo packaging/install.sh --dry-run            # print what would be done, change nothing
#
# Idempotent: run it again to upgrade. It never overwrites configuration an operator may have
# edited (agent.yaml, controlplane.env, keys); the shipped version lands next to it as *.dist.
# State (/var/lib/stanch, /var/lib/stanch-cp) is left alone; the journal migrates itself and
# keeps a backup of the previous schema.
#
# Needs: root, python3 >= 3.11 with the venv module (Debian: python3-venv), systemd.
set -euo pipefail

PREFIX=/opt/stanch
UNIT_DIR=/usr/local/lib/systemd/system
BIN_DIR=/usr/local/bin
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(dirname "$HERE")"
AGENT=1
CONTROLPLANE=0
START=1
DRY_RUN=0
PYTHON="${PYTHON:-python3}"

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --from PATH           source checkout or wheel to install (default: this checkout)
  --prefix DIR          virtualenv location (default: /opt/stanch; the units expect it)
  --controlplane        also install the control plane
  --only-controlplane   install the control plane, not the agent
  --no-start            install and enable, but do not (re)start anything
  --dry-run             print the commands instead of running them
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --from) SOURCE="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --controlplane) CONTROLPLANE=1; shift ;;
        --only-controlplane) CONTROLPLANE=1; AGENT=0; shift ;;
        --no-start) START=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

say() { printf 'install.sh: %s\n' "$*"; }

# Install a file unless the operator already has one; the shipped copy goes next to it.
install_config() {
    local src="$1" dest="$2" mode="$3"
    if [ -e "$dest" ]; then
        run install -m "$mode" "$src" "$dest.dist"
        say "kept your $dest; the shipped version is $dest.dist"
    else
        run install -m "$mode" "$src" "$dest"
    fi
}

preflight() {
    if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        echo "install.sh: run as root (it writes $PREFIX, /etc and systemd units)" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "install.sh: need python3 >= 3.11 with venv (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
    if [ ! -e "$SOURCE" ]; then
        echo "install.sh: --from $SOURCE does not exist" >&2
        exit 1
    fi
    command -v systemctl >/dev/null 2>&1 || say "no systemctl here: units are installed, not started"
}

install_venv() {
    say "virtualenv in $PREFIX from $SOURCE"
    if [ ! -x "$PREFIX/bin/python" ]; then
        run "$PYTHON" -m venv "$PREFIX"
    fi
    run "$PREFIX/bin/python" -m pip install --quiet --upgrade pip
    # Not editable: the service must not run code from a checkout someone may be editing.
    run "$PREFIX/bin/python" -m pip install --quiet --upgrade "$SOURCE"
    run ln -sf "$PREFIX/bin/stanch-agent" "$BIN_DIR/stanch-agent"
    run ln -sf "$PREFIX/bin/opsctl" "$BIN_DIR/opsctl"
}

install_agent() {
    say "agent: /etc/stanch, $UNIT_DIR/stanch-agent.service"
    run install -d -m 0755 /etc/stanch /etc/stanch/policies
    run install -d -m 0700 /etc/stanch/secrets
    install_config "$HERE/config/agent.yaml" /etc/stanch/agent.yaml 0644
    run install -m 0644 "$HERE/config/policies/README.md" /etc/stanch/policies/README.md
    run install -D -m 0644 "$HERE/systemd/stanch-agent.service" "$UNIT_DIR/stanch-agent.service"
    # Refuse to (re)start on a config or policy the new version rejects: the running agent
    # keeps going on the old one until a human looks.
    if [ "$DRY_RUN" = 0 ]; then
        if ! "$PREFIX/bin/python" -c 'import sys
from agent.config import load_config
from agent.errors import ConfigError
try:
    load_config(sys.argv[1])
except ConfigError as exc:
    sys.exit(f"{exc}")' /etc/stanch/agent.yaml; then
            say "/etc/stanch/agent.yaml does not validate; not starting the agent"
            START=0
        fi
        if ! "$PREFIX/bin/stanch-agent" check /etc/stanch/policies; then
            say "policies do not validate; not starting the agent"
            START=0
        fi
    fi
}

install_controlplane() {
    say "control plane: /etc/stanch-cp, $UNIT_DIR/stanch-controlplane.service"
    run install -d -m 0755 /etc/stanch-cp /etc/stanch-cp/trust
    install_config "$HERE/config/controlplane.env" /etc/stanch-cp/controlplane.env 0600
    if [ "$DRY_RUN" = 0 ] && grep -q '^STANCH_ADMIN_TOKEN=$' /etc/stanch-cp/controlplane.env; then
        token="$("$PREFIX/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
        sed -i "s|^STANCH_ADMIN_TOKEN=\$|STANCH_ADMIN_TOKEN=$token|" /etc/stanch-cp/controlplane.env
        say "generated an admin token in /etc/stanch-cp/controlplane.env (give it to opsctl users)"
    fi
    if [ ! -e /etc/stanch-cp/assignment.key ]; then
        # The online key that signs assignments; agents trust its .pub (assignment_keys).
        run "$PREFIX/bin/opsctl" keys generate /etc/stanch-cp/assignment
        run chmod 0600 /etc/stanch-cp/assignment.key
        say "copy /etc/stanch-cp/assignment.pub to each agent's assignment_keys directory"
    fi
    if [ "$DRY_RUN" = 0 ] && [ -z "$(ls -A /etc/stanch-cp/trust)" ]; then
        say "put the operators' bundle keys (*.pub or root.json) in /etc/stanch-cp/trust before starting"
        START=0
    fi
    run install -D -m 0644 "$HERE/systemd/stanch-controlplane.service" \
        "$UNIT_DIR/stanch-controlplane.service"
}

start_units() {
    command -v systemctl >/dev/null 2>&1 || return 0
    run systemctl daemon-reload
    local units=()
    if [ "$AGENT" = 1 ]; then units+=(stanch-agent.service); fi
    if [ "$CONTROLPLANE" = 1 ]; then units+=(stanch-controlplane.service); fi
    run systemctl enable "${units[@]}"
    if [ "$START" = 1 ]; then
        run systemctl restart "${units[@]}"
        say "started: ${units[*]} (systemctl status ${units[*]})"
    else
        say "enabled, not started: ${units[*]}"
    fi
}

preflight
install_venv
if [ "$AGENT" = 1 ]; then install_agent; fi
if [ "$CONTROLPLANE" = 1 ]; then install_controlplane; fi
start_units
