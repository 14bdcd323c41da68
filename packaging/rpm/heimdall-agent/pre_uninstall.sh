# heimdall-agent %preun: on erase (not upgrade), stop and disable the service.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now heimdall-agent.service >/dev/null 2>&1 || true
fi
exit 0
