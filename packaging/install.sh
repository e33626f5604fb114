#!/usr/bin/env bash
# Install Stanch on a systemd host: a virtualenv under /opt/stanch, the units, default config.
#
#   sudo packaging/install.sh                      # the agent, from this checkout
#   sudo packaging/install.sh --controlplane       # the control plane too (or --only-controlplane)
#   sudo packaging/install.sh --only-controlplane --san cp.example.com --san 10.0.0.5
#   sudo packaging/install.sh --from dist/stanch-0.1.0-py3-none-any.whl --no-start
#   sudo packaging/install.sh --dry-run            # print what would be done, change nothing
#
# Idempotent: run it again to upgrade. It never overwrites configuration an operator may have
# edited (agent.yaml, controlplane.env, keys); the shipped version lands next to it as *.dist.
# State (/var/lib/stanch, /var/lib/stanch-cp) is left alone; the journal migrates itself and
# keeps a backup of the previous schema.
#
# Control plane, first install only: the fleet CA and server certificate (opsctl pki init, in
# /etc/stanch-cp/pki, keys 0600; names from --san, default this host's names), and a bootstrap
# admin token written to /etc/stanch-cp/bootstrap-admin.token (0600 root, never printed).
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
SANS=()
CP_ETC=/etc/stanch-cp
PKI_DIR=$CP_ETC/pki
BOOTSTRAP_TOKEN=$CP_ETC/bootstrap-admin.token
BOOTSTRAP_DONE=$CP_ETC/bootstrap-admin.done
BOOTSTRAP_EXPIRES=7d
PYTHON="${PYTHON:-python3}"

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --from PATH           source checkout or wheel to install (default: this checkout)
  --prefix DIR          virtualenv location (default: /opt/stanch; the units expect it)
  --controlplane        also install the control plane
  --only-controlplane   install the control plane, not the agent
  --san NAME            a DNS name or IP agents and opsctl use for the control plane
                        (repeat; default: hostname -f, hostname -s, localhost, 127.0.0.1, ::1)
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
        --san) SANS+=("$2"); shift 2 ;;
        --no-start) START=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
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

# The database the unit uses: STANCH_CP_DB from the operator's controlplane.env (or the
# shipped one on a first install), as systemd reads it: KEY=value, optionally quoted.
cp_db() {
    local env="$CP_ETC/controlplane.env" db
    [ -e "$env" ] || env="$HERE/config/controlplane.env"
    db="$(sed -n 's/^STANCH_CP_DB=//p' "$env" | tail -n 1)"
    db="${db#\"}"; db="${db%\"}"
    printf '%s\n' "${db:-/var/lib/stanch-cp/controlplane.db}"
}

default_sans() {
    local name
    for name in "$(hostname -f 2>/dev/null || true)" "$(hostname -s 2>/dev/null || true)" \
        localhost 127.0.0.1 ::1; do
        if [ -n "$name" ] && [[ " ${SANS[*]} " != *" $name "* ]]; then SANS+=("$name"); fi
    done
}

# The fleet CA and the control plane's certificate, once: a new CA would strand every enrolled
# host (`opsctl pki init --force` is a deliberate, manual act).
install_pki() {
    if [ -e "$PKI_DIR/ca.key" ]; then
        say "kept the fleet CA in $PKI_DIR"
        return 0
    fi
    if [ "${#SANS[@]}" = 0 ]; then default_sans; fi
    local sans=() name
    for name in "${SANS[@]}"; do sans+=(--san "$name"); done
    run install -d -m 0700 "$PKI_DIR"
    run "$PREFIX/bin/opsctl" pki init --dir "$PKI_DIR" "${sans[@]}"
    run chmod 0600 "$PKI_DIR/ca.key" "$PKI_DIR/server.key"
    say "fleet CA in $PKI_DIR for ${SANS[*]}; agents need $PKI_DIR/ca.crt (not ca.key)"
}

# The first admin token, straight into the database (no server, no token needed). Written to a
# root-only file rather than the terminal, which may be a CI log; done once, remembered by a
# marker (holding no secret), so a re-run never mints another admin token.
bootstrap_admin() {
    if [ -e "$BOOTSTRAP_DONE" ]; then
        return 0
    fi
    local db create
    db="$(cp_db)"
    create=("$PREFIX/bin/stanch-cp" tokens create --db "$db" --name bootstrap-admin --role admin
        --expires "$BOOTSTRAP_EXPIRES")
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "${create[@]}"
        printf ' > %q\n' "$BOOTSTRAP_TOKEN"
        return 0
    fi
    case "$db" in
        postgres://*|postgresql://*) ;;
        *) [ -e /var/lib/stanch-cp ] || install -d -m 0700 /var/lib/stanch-cp ;;
    esac
    # A PostgreSQL password, if any, travels as libpq's PGPASSWORD (environment, not argv).
    local env="$CP_ETC/controlplane.env" password
    password="$(sed -n 's/^PGPASSWORD=//p' "$env" | tail -n 1)"
    password="${password#\"}"; password="${password%\"}"
    if [ -n "$password" ]; then export PGPASSWORD="$password"; fi
    (umask 077 && "${create[@]}" >"$BOOTSTRAP_TOKEN.new")
    unset PGPASSWORD
    mv "$BOOTSTRAP_TOKEN.new" "$BOOTSTRAP_TOKEN"
    case "$db" in
        postgres://*|postgresql://*) ;;
        # Files root just created in the service's state directory go to its owner (the
        # dynamic user once the service has run; systemd also fixes this at start).
        *) chown --reference="$(dirname "$db")" "$db"* ;;
    esac
    printf 'created %s (admin, expires in %s)\n' "$(date -u +%FT%TZ)" "$BOOTSTRAP_EXPIRES" \
        >"$BOOTSTRAP_DONE"
    say "bootstrap admin token (expires in $BOOTSTRAP_EXPIRES) in $BOOTSTRAP_TOKEN (0600):"
    say "  use it to create per-person tokens (opsctl tokens create), then delete the file"
}

install_controlplane() {
    say "control plane: $CP_ETC, $UNIT_DIR/stanch-controlplane.service"
    run install -d -m 0755 "$CP_ETC" "$CP_ETC/trust"
    install_config "$HERE/config/controlplane.env" "$CP_ETC/controlplane.env" 0600
    run ln -sf "$PREFIX/bin/stanch-cp" "$BIN_DIR/stanch-cp"
    if [ "$DRY_RUN" = 0 ] && grep -q '^STANCH_CP_ARGS=.*--insecure' "$CP_ETC/controlplane.env"; then
        say "$CP_ETC/controlplane.env passes --insecure, but the unit now serves mTLS from"
        say "  $PKI_DIR: remove --insecure (compare controlplane.env.dist); not starting"
        START=0
    fi
    if [ "$DRY_RUN" = 0 ] && grep -q '^STANCH_ADMIN_TOKEN=.' "$CP_ETC/controlplane.env"; then
        say "STANCH_ADMIN_TOKEN (one shared admin token) is deprecated: once every operator has"
        say "  a token of their own (opsctl tokens create), delete that line"
    fi
    if [ ! -e "$CP_ETC/assignment.key" ]; then
        # The online key that signs assignments; agents trust its .pub (assignment_keys).
        run "$PREFIX/bin/opsctl" keys generate "$CP_ETC/assignment"
        run chmod 0600 "$CP_ETC/assignment.key"
        say "copy $CP_ETC/assignment.pub to each agent's assignment_keys directory"
    fi
    install_pki
    bootstrap_admin
    if [ "$DRY_RUN" = 0 ] && [ -z "$(ls -A "$CP_ETC/trust")" ]; then
        say "put the operators' bundle keys (*.pub or root.json) in $CP_ETC/trust before starting"
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
