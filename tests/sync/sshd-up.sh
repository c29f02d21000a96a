#!/usr/bin/env bash
# sshd-up.sh DIR PORT -- start a throwaway OpenSSH server on 127.0.0.1:PORT for the
# rsync-over-ssh sync tests.  Run as root.  Installs Debian's openssh-server when
# /usr/sbin/sshd is missing (without starting the system's own ssh service).
#
# Everything lives in DIR: host and client keys, authorized_keys, the config, the
# log and sshd.pid.  Only key logins to 127.0.0.1 are accepted.  Connect with
#   ssh -p PORT -i DIR/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1
# and stop it with: kill "$(cat DIR/sshd.pid)"
set -euo pipefail
DIR="$1"
PORT="$2"
[ "$(id -u)" = 0 ] || { echo "sshd-up.sh: must run as root" >&2; exit 1; }

if [ ! -x /usr/sbin/sshd ]; then
    # policy-rc.d exit 101 keeps the package from starting the system service.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends openssh-server >&2
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
command -v rsync >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends rsync >&2
}

mkdir -p "$DIR" /run/sshd
chmod 700 "$DIR"
[ -f "$DIR/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_key"
[ -f "$DIR/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/client_key"
cp "$DIR/client_key.pub" "$DIR/authorized_keys"
chmod 600 "$DIR/authorized_keys"
cat > "$DIR/sshd_config" <<CONF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
LogLevel ERROR
CONF
/usr/sbin/sshd -t -f "$DIR/sshd_config"
/usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"

for _ in $(seq 1 100); do
    if ssh -p "$PORT" -i "$DIR/client_key" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
        -o ConnectTimeout=2 root@127.0.0.1 true 2>/dev/null; then
        echo "sshd-up.sh: sshd $(cat "$DIR/sshd.pid") on 127.0.0.1:$PORT" >&2
        exit 0
    fi
    sleep 0.1
done
echo "sshd-up.sh: sshd did not accept a key login on 127.0.0.1:$PORT" >&2
cat "$DIR/sshd.log" >&2 || true
exit 1
