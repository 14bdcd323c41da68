#!/usr/bin/env bash
# Installs the peers of the `peers` benchmark from Debian's packages: rsyslog through
# apt, and syslog-ng-core unpacked under target/peers/syslog-ng-root (Debian marks the
# two as conflicting, so both cannot be installed as packages at once). Neither is
# started as a service; the benchmark runs them in the foreground with its own configs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q rsyslog libivykis0 libjson-c5 libnet1 libwrap0 libglib2.0-0 libcap2 libpcre3
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now rsyslog >/dev/null 2>&1 || true
fi
root="$PWD/target/peers/syslog-ng-root"
if [ ! -x "$root/usr/sbin/syslog-ng" ]; then
    d=$(mktemp -d)
    (cd "$d" && apt-get download syslog-ng-core && mkdir -p "$root" && dpkg -x syslog-ng-core_*.deb "$root")
    rm -rf "$d"
fi
echo "peers ready: $(/usr/sbin/rsyslogd -v | head -1); syslog-ng under $root"
