# heimdall-agent %post: the system user and its state directory, then the service
# (enabled on first install as the presets say, restarted on upgrade by %postun).
U=heimdall-agent
STATE=/var/lib/heimdall-agent
if ! getent group "$U" >/dev/null; then
    groupadd --system "$U"
fi
if ! getent passwd "$U" >/dev/null; then
    useradd --system --gid "$U" --home-dir "$STATE" --no-create-home \
        --shell /sbin/nologin --comment "Heimdall log agent" "$U"
fi
install -d -o "$U" -g "$U" -m 0750 "$STATE"
for g in adm systemd-journal; do
    if getent group "$g" >/dev/null && ! id -nG "$U" | tr ' ' '\n' | grep -qx "$g"; then
        usermod --append --groups "$g" "$U"
    fi
done
install -d -o root -g "$U" -m 0750 /etc/heimdall/tls
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -eq 1 ]; then
        systemctl preset heimdall-agent.service >/dev/null 2>&1 || true
    fi
fi
exit 0
