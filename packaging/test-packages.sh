#!/usr/bin/env bash
# Package tests: builds the .deb and .rpm packages, INSTALLS THE .debs ON THIS MACHINE
# and takes them through a sysadmin's life cycle:
#
#   install (users, groups, files, owners, modes, enabled units, a CA) →
#   systemd-analyze verify and security (exposure 2.0 or lower) →
#   check-config on the shipped configs, a bad key named →
#   enroll an agent with issue-agent-cert and run both services as their users from
#   the installed files (readiness over NOTIFY_SOCKET, a line from /var/log queried
#   back) →
#   upgrade over the previous build, keeping an edited config and the state →
#   remove (config and state stay) → purge (both gone).
#
# The .rpm files are checked with `rpm -qlp` / `rpm -qp --scripts`.
#
# It needs root, dpkg, systemd-analyze, rpm, man-db, cargo-deb and cargo-generate-rpm,
# and changes the machine (system users stay after purge, as Debian does), so it runs
# only with --on-this-machine: CI runs it on a throwaway machine.
#
#   packaging/test-packages.sh --on-this-machine [--profile dev|release]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dev
consent=
while [ $# -gt 0 ]; do
    case "$1" in
        --on-this-machine) consent=1; shift ;;
        --profile) profile=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-packages.sh: unknown option $1" >&2; exit 64 ;;
    esac
done
if [ -z "$consent" ]; then
    echo "test-packages.sh installs and purges packages on this machine; pass --on-this-machine" >&2
    exit 64
fi
[ "$(id -u)" = 0 ] || { echo "test-packages.sh: must run as root" >&2; exit 1; }
for c in dpkg dpkg-deb rpm systemd-analyze man runuser setpriv python3 cargo-deb cargo-generate-rpm; do
    command -v "$c" >/dev/null || { echo "test-packages.sh: $c is missing" >&2; exit 1; }
done
if dpkg-query -W heimdall-agent >/dev/null 2>&1 || dpkg-query -W heimdall-aggregator >/dev/null 2>&1; then
    echo "test-packages.sh: Heimdall packages are already installed here; remove them first" >&2
    exit 1
fi

work=$(mktemp -d /tmp/heimdall-pkgtest.XXXXXX)
report=target/package-test-report.txt
pids=()
installed=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$installed" ]; then
        dpkg -P heimdall-agent heimdall-aggregator >/dev/null 2>&1 || true
    fi
    rm -rf "$work" /var/log/heimdall-pkgtest
}
trap cleanup EXIT

n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_mode() { # path mode owner:group
    local got
    got=$(stat -c '%a %U:%G' "$1" 2>/dev/null) || fail "$1 is missing"
    [ "$got" = "$2 $3" ] || fail "$1: expected $2 $3, got $got"
    ok "$1 is $2 $3"
}
expect_absent() { [ ! -e "$1" ] || fail "$1 should not exist"; ok "$1 is gone"; }
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
prev="$version~prev"

echo "== building packages (profile $profile): previous ($prev) and current ($version)"
build_flags=(--profile "$profile" --fast)
# The same build as the end-to-end tests' (`--workspace --tests`: the same features as
# `cargo test`), so after `cargo test` nothing is compiled again.
cargo build --locked --profile "$profile" --workspace --bins --tests
packaging/build-packages.sh "${build_flags[@]}" --no-build --version "$prev" --out "$work/prev" >/dev/null
packaging/build-packages.sh "${build_flags[@]}" --no-build --out "$work/cur" >/dev/null
deb() { echo "$work/$1/$2_$3-1_$(dpkg --print-architecture).deb"; }

echo "== rpm packages"
for p in heimdall-agent heimdall-aggregator; do
    r=$(ls "$work/cur/$p-$version-1".*.rpm)
    rpm -qlp "$r" >"$work/$p.rpm.list"
    case $p in
        heimdall-agent) want="/usr/bin/heimdall-agent /etc/heimdall/agent.toml
            /usr/lib/systemd/system/heimdall-agent.service
            /usr/share/man/man1/heimdall-agent.1.gz /usr/share/man/man1/heimdall-agent-run.1.gz
            /usr/share/bash-completion/completions/heimdall-agent
            /usr/share/zsh/site-functions/_heimdall-agent
            /usr/share/fish/vendor_completions.d/heimdall-agent.fish" ;;
        heimdall-aggregator) want="/usr/bin/heimdall-aggregator /usr/bin/heimdall
            /etc/heimdall/aggregator.toml /etc/heimdall/rules/heimdall.yml
            /usr/lib/systemd/system/heimdall-aggregator.service
            /usr/share/man/man1/heimdall-aggregator.1.gz /usr/share/man/man1/heimdall.1.gz
            /usr/share/man/man1/heimdall-query.1.gz
            /usr/share/bash-completion/completions/heimdall
            /usr/share/zsh/site-functions/_heimdall
            /usr/share/fish/vendor_completions.d/heimdall.fish" ;;
    esac
    for f in $want; do
        grep -qx "$f" "$work/$p.rpm.list" || fail "$r does not list $f (rpm -qlp):\n$(cat "$work/$p.rpm.list")"
    done
    ok "rpm -qlp $(basename "$r") lists $(echo "$want" | wc -w) expected files"
    # (Whole outputs first: `grep -q` closing a pipe early fails it under pipefail.)
    conf=$(rpm -qp --configfiles "$r")
    grep -q '^/etc/heimdall/' <<<"$conf" || fail "$r marks no config file"
    scripts=$(rpm -qp --scripts "$r")
    grep -q 'useradd --system' <<<"$scripts" || fail "$r has no %post creating the user"
    ok "$(basename "$r") marks its configs and creates its user"
done

echo "== install the previous build"
installed=1
dpkg -i "$(deb prev heimdall-agent "$prev")" "$(deb prev heimdall-aggregator "$prev")" >"$work/install.log" 2>&1 \
    || fail "dpkg -i failed:\n$(cat "$work/install.log")"
ok "dpkg -i installed both packages"
for u in heimdall-agent heimdall-aggregator; do
    getent passwd "$u" >/dev/null || fail "user $u was not created"
    [ "$(getent passwd "$u" | cut -d: -f7)" = /usr/sbin/nologin ] || fail "$u has a login shell"
    [ "$(id -u "$u")" -lt 1000 ] || fail "$u is not a system user"
done
ok "system users heimdall-agent and heimdall-aggregator exist, without a login shell"
for g in adm systemd-journal; do
    if getent group "$g" >/dev/null; then
        grep -qx "$g" <<<"$(id -nG heimdall-agent | tr ' ' '\n')" || fail "heimdall-agent is not in group $g"
        ok "heimdall-agent is in group $g"
    fi
done
for b in heimdall-agent heimdall-aggregator heimdall; do expect_mode "/usr/bin/$b" 755 root:root; done
expect_mode /etc/heimdall/agent.toml 644 root:root
expect_mode /etc/heimdall/aggregator.toml 644 root:root
expect_mode /etc/heimdall/rules/heimdall.yml 644 root:root
expect_mode /etc/heimdall/tls 750 root:heimdall-agent
expect_mode /var/lib/heimdall-agent 750 heimdall-agent:heimdall-agent
expect_mode /var/lib/heimdall-aggregator 750 heimdall-aggregator:heimdall-aggregator
expect_mode /var/lib/heimdall-aggregator/tls/ca-key.pem 600 heimdall-aggregator:heimdall-aggregator
expect_mode /var/lib/heimdall-aggregator/tls/server-key.pem 600 heimdall-aggregator:heimdall-aggregator
for u in heimdall-agent heimdall-aggregator; do
    expect_mode "/usr/lib/systemd/system/$u.service" 644 root:root
    [ -L "/etc/systemd/system/multi-user.target.wants/$u.service" ] || fail "$u.service is not enabled"
    ok "$u.service is enabled (multi-user.target.wants)"
done
grep -qx /etc/heimdall/agent.toml /var/lib/dpkg/info/heimdall-agent.conffiles || fail "agent.toml is not a conffile"
grep -qx /etc/heimdall/aggregator.toml /var/lib/dpkg/info/heimdall-aggregator.conffiles || fail "aggregator.toml is not a conffile"
ok "the configs are conffiles"
for page in heimdall-agent heimdall-agent-check-config heimdall-aggregator heimdall-aggregator-issue-agent-cert heimdall heimdall-query; do
    man -w "$page" >/dev/null 2>&1 || fail "man $page finds no page"
done
ok "man pages are found by man"
bash -c 'source /usr/share/bash-completion/completions/heimdall && complete -p heimdall' >/dev/null \
    || fail "the bash completion for heimdall does not load"
bash -c 'source /usr/share/bash-completion/completions/heimdall-agent && complete -p heimdall-agent' >/dev/null \
    || fail "the bash completion for heimdall-agent does not load"
ok "bash completions load"

echo "== systemd-analyze"
: >"$report"
for u in heimdall-agent heimdall-aggregator; do
    systemd-analyze verify "/usr/lib/systemd/system/$u.service" >"$work/verify.log" 2>&1 \
        || fail "systemd-analyze verify $u.service:\n$(cat "$work/verify.log")"
    [ ! -s "$work/verify.log" ] || fail "systemd-analyze verify $u.service warns:\n$(cat "$work/verify.log")"
    ok "systemd-analyze verify $u.service"
    score=$(systemd-analyze security --offline=true "/usr/lib/systemd/system/$u.service" 2>&1 \
        | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
    [ -n "$score" ] || fail "no exposure level from systemd-analyze security for $u"
    awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "$u.service exposure $score is above 2.0"
    echo "systemd-analyze security $u.service: $score" | tee -a "$report"
    ok "$u.service exposure $score (2.0 or lower)"
done

echo "== check-config on the shipped configs"
runuser -u heimdall-agent -- heimdall-agent check-config --config /etc/heimdall/agent.toml >/dev/null \
    || fail "the shipped agent.toml is invalid"
runuser -u heimdall-aggregator -- heimdall-aggregator check-config --config /etc/heimdall/aggregator.toml >/dev/null \
    || fail "the shipped aggregator.toml is invalid"
ok "shipped configs are valid (checked as the service users)"
sed 's/^server_name = /servr_name = /' /etc/heimdall/agent.toml >"$work/bad-agent.toml"
set +e
heimdall-agent check-config --config "$work/bad-agent.toml" >"$work/bad.out" 2>&1
rc=$?
set -e
[ "$rc" = 64 ] || fail "check-config on a bad key exited $rc, not 64"
grep -q servr_name "$work/bad.out" || fail "check-config does not name the bad key: $(cat "$work/bad.out")"
printf '[ingest]\nlisten = "nowhere"\n' >"$work/bad-agg.toml"
set +e
heimdall-aggregator check-config --config "$work/bad-agg.toml" >"$work/bad.out" 2>&1
rc=$?
set -e
[ "$rc" = 64 ] && grep -q 'ingest.listen' "$work/bad.out" || fail "aggregator check-config: rc $rc: $(cat "$work/bad.out")"
ok "check-config exits 64 and names the bad key"

echo "== enroll an agent and run both services from the installed files"
# What a sysadmin does: a certificate for this host from the aggregator's CA, copied
# into /etc/heimdall/tls for the agent.
heimdall-aggregator issue-agent-cert --state-dir /var/lib/heimdall-aggregator \
    --name pkgtest-host --out "$work/enroll" >/dev/null
install -o root -g heimdall-agent -m 0640 "$work/enroll/pkgtest-host.pem" /etc/heimdall/tls/agent.pem
install -o root -g heimdall-agent -m 0640 "$work/enroll/pkgtest-host-key.pem" /etc/heimdall/tls/agent-key.pem
install -o root -g heimdall-agent -m 0640 "$work/enroll/ca.pem" /etc/heimdall/tls/ca.pem
ok "issue-agent-cert made a certificate, installed into /etc/heimdall/tls"
mkdir -p /var/log/heimdall-pkgtest
# systemd's notification socket, played by a small listener.
notify_dir="$work/notify"
mkdir -p "$notify_dir"
chmod 755 "$work" "$notify_dir"
start_notify_listener() { # name
    python3 - "$notify_dir/$1.sock" "$notify_dir/$1.msgs" <<'PY' &
import os, socket, sys
sock, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sock)
os.chmod(sock, 0o777)
with open(out, "ab", buffering=0) as f:
    while True:
        f.write(s.recv(4096) + b"\n--\n")
PY
    pids+=($!)
    for _ in $(seq 50); do [ -S "$notify_dir/$1.sock" ] && return; sleep 0.1; done
    fail "the notification listener did not start"
}
wait_for() { # file pattern seconds what [log to show]
    for _ in $(seq $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.1; done
    fail "$4 (no '$2' in $1 after $3 s)${5:+:\n$(tail -n 30 "$5" 2>/dev/null)}"
}
start_notify_listener aggregator
start_notify_listener agent
# setpriv (not runuser) execs the service itself, as systemd does, so signals reach it.
setpriv --reuid=heimdall-aggregator --regid=heimdall-aggregator --init-groups env NOTIFY_SOCKET="$notify_dir/aggregator.sock" WATCHDOG_USEC=2000000 \
    heimdall-aggregator run --config /etc/heimdall/aggregator.toml >"$work/aggregator.log" 2>&1 &
agg_pid=$!
pids+=("$agg_pid")
wait_for "$notify_dir/aggregator.msgs" READY=1 60 "the aggregator did not report readiness" "$work/aggregator.log"
ok "the aggregator, run as its user with the shipped config, sent READY=1"
wait_for "$notify_dir/aggregator.msgs" WATCHDOG=1 10 "the aggregator sent no watchdog ping"
ok "the aggregator pings the watchdog"
setpriv --reuid=heimdall-agent --regid=heimdall-agent --init-groups env NOTIFY_SOCKET="$notify_dir/agent.sock" WATCHDOG_USEC=2000000 \
    heimdall-agent run --config /etc/heimdall/agent.toml >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
wait_for "$notify_dir/agent.msgs" READY=1 60 "the agent did not report readiness" "$work/agent.log"
wait_for "$notify_dir/agent.msgs" WATCHDOG=1 10 "the agent sent no watchdog ping"
ok "the agent, run as its user with the shipped config, sent READY=1 and pings the watchdog"
# A file made after the start is read from its beginning; only root and group adm
# may read it, as Debian's logs.
install -o root -g adm -m 0640 /dev/null /var/log/heimdall-pkgtest/app.log
echo "package test line $$" >>/var/log/heimdall-pkgtest/app.log
found=
for _ in $(seq 300); do
    if grep -q "package test line $$" <<<"$(heimdall query '{service="heimdall-pkgtest"}' --since 1h 2>/dev/null)"; then
        found=1
        break
    fi
    sleep 0.1
done
[ -n "$found" ] || fail "the line written to /var/log was not stored:\nagent:\n$(tail -n 30 "$work/agent.log")\naggregator:\n$(tail -n 30 "$work/aggregator.log")"
ok "a line from a group-adm file in /var/log reached the aggregator and is queried back"
kill -TERM "$agent_pid" "$agg_pid"
for p in "$agent_pid" "$agg_pid"; do
    st=0
    wait "$p" || st=$?
    [ "$st" = 0 ] || fail "a service exited $st after SIGTERM"
done
grep -q STOPPING=1 "$notify_dir/agent.msgs" || fail "the agent did not send STOPPING=1"
ok "SIGTERM stops both cleanly (exit 0, STOPPING=1)"

echo "== upgrade over the previous build"
echo '# edited by the administrator' >>/etc/heimdall/agent.toml
sed -i 's/^# host = "web1"/host = "pkgtest-edited"/' /etc/heimdall/agent.toml
edited=$(sha256sum /etc/heimdall/agent.toml | cut -d' ' -f1)
ca=$(sha256sum /var/lib/heimdall-aggregator/tls/ca.pem | cut -d' ' -f1)
[ -e /var/lib/heimdall-aggregator/hot.db ] || fail "the aggregator made no hot database in its state directory"
ls /var/lib/heimdall-agent/spool >/dev/null || fail "the agent made no spool in its state directory"
state_before=$(find /var/lib/heimdall-agent /var/lib/heimdall-aggregator -type f | sort)
DEBIAN_FRONTEND=noninteractive dpkg -i "$(deb cur heimdall-agent "$version")" "$(deb cur heimdall-aggregator "$version")" \
    </dev/null >"$work/upgrade.log" 2>&1 || fail "upgrade failed:\n$(cat "$work/upgrade.log")"
[ "$(dpkg-query -W -f '${Version}' heimdall-agent)" = "$version-1" ] || fail "heimdall-agent was not upgraded"
[ "$(dpkg-query -W -f '${Version}' heimdall-aggregator)" = "$version-1" ] || fail "heimdall-aggregator was not upgraded"
ok "upgraded $prev-1 → $version-1"
[ "$(sha256sum /etc/heimdall/agent.toml | cut -d' ' -f1)" = "$edited" ] || fail "the edited agent.toml was replaced"
ok "the edited /etc/heimdall/agent.toml is kept"
[ "$(sha256sum /var/lib/heimdall-aggregator/tls/ca.pem | cut -d' ' -f1)" = "$ca" ] || fail "the CA changed on upgrade"
[ "$(find /var/lib/heimdall-agent /var/lib/heimdall-aggregator -type f | sort)" = "$state_before" ] \
    || fail "state files changed across the upgrade"
expect_mode /var/lib/heimdall-agent 750 heimdall-agent:heimdall-agent
ok "state directories, the CA and the stored data are kept"
runuser -u heimdall-aggregator -- heimdall-aggregator check-config --config /etc/heimdall/aggregator.toml >/dev/null
runuser -u heimdall-agent -- heimdall-agent check-config --config /etc/heimdall/agent.toml >/dev/null
ok "the configs are still valid after the upgrade"

echo "== remove"
dpkg -r heimdall-agent heimdall-aggregator >"$work/remove.log" 2>&1 || fail "dpkg -r failed:\n$(cat "$work/remove.log")"
for b in heimdall-agent heimdall-aggregator heimdall; do expect_absent "/usr/bin/$b"; done
expect_absent /usr/lib/systemd/system/heimdall-agent.service
expect_absent /etc/systemd/system/multi-user.target.wants/heimdall-agent.service
[ -f /etc/heimdall/agent.toml ] && [ -f /etc/heimdall/aggregator.toml ] || fail "remove deleted the configs"
[ -d /var/lib/heimdall-agent ] && [ -f /var/lib/heimdall-aggregator/hot.db ] || fail "remove deleted the state"
[ "$(dpkg-query -W -f '${db:Status-Status}' heimdall-agent)" = config-files ] || fail "heimdall-agent is not in config-files state"
ok "remove keeps configs, certificates and state"

echo "== purge"
dpkg -P heimdall-agent heimdall-aggregator >"$work/purge.log" 2>&1 || fail "dpkg -P failed:\n$(cat "$work/purge.log")"
expect_absent /etc/heimdall
expect_absent /var/lib/heimdall-agent
expect_absent /var/lib/heimdall-aggregator
expect_absent /etc/systemd/system/heimdall-agent.service
expect_absent /etc/systemd/system/heimdall-aggregator.service
if dpkg-query -W heimdall-agent >/dev/null 2>&1; then fail "heimdall-agent is still known to dpkg"; fi
ok "purge deletes configs, certificates and state"
installed=

echo "== sizes"
for f in "$work"/cur/*; do
    echo "package $(basename "$f"): $(stat -c %s "$f") bytes" | tee -a "$report"
done
echo "all $n package checks passed (profile $profile); scores and sizes in $report"
