# heimdall-aggregator %post: the system user and its state directory, then the service
# (enabled on first install as the presets say, restarted on upgrade by %postun).
U=heimdall-aggregator
STATE=/var/lib/heimdall-aggregator
if ! getent group "$U" >/dev/null; then
    groupadd --system "$U"
fi
if ! getent passwd "$U" >/dev/null; then
    useradd --system --gid "$U" --home-dir "$STATE" --no-create-home \
        --shell /sbin/nologin --comment "Heimdall log aggregator" "$U"
fi
install -d -o "$U" -g "$U" -m 0750 "$STATE"
if [ ! -e "$STATE/tls/ca.pem" ]; then
    fqdn=$(hostname --fqdn 2>/dev/null || true)
    runuser -u "$U" -- /usr/bin/heimdall-aggregator init --state-dir "$STATE" \
        ${fqdn:+--san "$fqdn"} >/dev/null
    echo "heimdall-aggregator: made a private CA and a server certificate in $STATE/tls"
fi
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -eq 1 ]; then
        systemctl preset heimdall-aggregator.service >/dev/null 2>&1 || true
    fi
fi
exit 0
