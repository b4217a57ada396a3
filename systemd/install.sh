#!/usr/bin/env bash
# Install quietcast as a system service (run as root from the repository):
#   bash systemd/install.sh [/path/to/quietcast]
# Installs the units, the user (sysusers) and a default config, then
# enables the service. The JACK unit is an example: edit its ALSA device.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exe="${1:-$(command -v quietcast || echo /usr/local/bin/quietcast)}"
install -d /usr/share/quietcast /usr/lib/sysusers.d /usr/lib/tmpfiles.d
install -m 0644 "$here/../daemon/default.toml" /usr/share/quietcast/quietcast.toml
install -m 0644 "$here/quietcast.sysusers" /usr/lib/sysusers.d/quietcast.conf
install -m 0644 "$here/quietcast.tmpfiles" /usr/lib/tmpfiles.d/quietcast.conf
sed "s#/usr/local/bin/quietcast#$exe#" "$here/quietcast.service" > /etc/systemd/system/quietcast.service
[ -e /etc/systemd/system/jackd.service ] || install -m 0644 "$here/jackd.service" /etc/systemd/system/jackd.service
systemd-sysusers /usr/lib/sysusers.d/quietcast.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/quietcast.conf
systemctl daemon-reload
systemctl enable quietcast.service
echo "installed; edit /etc/quietcast/quietcast.toml and /etc/systemd/system/jackd.service, then: systemctl start quietcast"
