#!/usr/bin/env bash
# Install the real services that tests/services/ starts as throw-away instances,
# and the headless browser the dashboard's tests drive (Debian's chromium).
#
#   bash .ci/services.sh install
#
# Idempotent: packages already present are left alone. Nothing is started or
# enabled: the tests run every daemon themselves, in a temp folder, on free
# loopback ports. Debian's postinst scripts would otherwise start the system
# instances (postgres on :5432, sshd on :22, slurm, munge), so a policy-rc.d that
# forbids starting services is in place for the duration of the install.
set -euo pipefail

# package -> a file that exists once it is installed (checked before dpkg -s).
declare -A PROBES=(
    [postgresql]="/usr/lib/postgresql"
    [openssh-server]="/usr/sbin/sshd"
    [openssh-client]="/usr/bin/ssh"
    [slurm-wlm]="/usr/sbin/slurmctld"
    [munge]="/usr/sbin/munged"
    [chromium]="/usr/bin/chromium"
    [chromium-driver]="/usr/bin/chromedriver"
)
PACKAGES=(postgresql openssh-server openssh-client slurm-wlm munge chromium chromium-driver)
POLICY=/usr/sbin/policy-rc.d

die() { echo "services.sh: error: $*" >&2; exit 1; }

is_installed() {
    [[ -e "${PROBES[$1]}" ]] &&
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# Keep a pre-existing policy-rc.d (Docker images ship one); remove only ours.
policy_created=0
restore_policy() {
    if [[ $policy_created == 1 ]]; then rm -f "$POLICY"; fi
}

install() {
    [[ $(id -u) == 0 ]] || die "must run as root (apt-get install)"
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} == 0 ]]; then
        echo "services.sh: all present (${PACKAGES[*]})"
        return
    fi

    if [[ ! -e $POLICY ]]; then
        trap restore_policy EXIT
        printf '#!/bin/sh\n# services.sh: never start daemons during install\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        policy_created=1
    fi

    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"

    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "$pkg still missing after apt-get install"
        echo "services.sh: installed $pkg"
    done
}

case "${1:-}" in
    install) install ;;
    *) die "usage: bash .ci/services.sh install" ;;
esac
