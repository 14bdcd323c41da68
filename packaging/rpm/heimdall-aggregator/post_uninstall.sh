# heimdall-aggregator %postun: reload units; on upgrade restart a running service with the new binary.
# Erase keeps /var/lib/heimdall-aggregator and an edited configuration (.rpmsave), as RPM does.
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then
        systemctl try-restart heimdall-aggregator.service >/dev/null 2>&1 || true
    fi
fi
exit 0
