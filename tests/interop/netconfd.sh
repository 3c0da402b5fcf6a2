#!/usr/bin/env bash
# Runs Debian's netconfd (yuma123) behind OpenSSH, as a NETCONF server nobody here wrote,
# for interop tests of our client.
#
# Usage:
#   netconfd.sh start <dir>   set up in <dir>, start netconfd and sshd in the background,
#                             wait until the SSH port accepts connections, then print ONE
#                             line of JSON: {"addr":"127.0.0.1:PORT","user":"...","key":"..."}
#   netconfd.sh stop <dir>    stop both and remove the socket
#
# Needs the Debian packages listed in apt-packages.txt (this script does not install them)
# and root (it creates the login user qkdni-nc if missing and runs sshd).
# Everything else goes into <dir>: host key, client key, authorized_keys, sshd config, the
# netconfd socket, logs, pids, and netconfd's own files (--yuma-home=<dir>, HOME=<dir>).

set -euo pipefail

NC_USER=${QKDNI_NETCONFD_USER:-qkdni-nc}
NETCONFD=/usr/sbin/netconfd
SUBSYSTEM=/usr/sbin/netconf-subsystem
SSHD=/usr/sbin/sshd

die() {
    echo "netconfd.sh: $*" >&2
    exit 1
}

port_in_use() {
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    return 1
}

pid_alive() {
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop() {
    local dir=$1 name pidfile pid i
    for name in sshd netconfd; do
        pidfile=$dir/$name.pid
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    rm -f "$dir/ncxserver.sock"
}

start() {
    local dir=$1
    for bin in "$NETCONFD" "$SUBSYSTEM"; do
        [[ -x $bin ]] || die "$bin not found: install the Debian package netconfd (see tests/interop/apt-packages.txt)"
    done
    [[ -x $SSHD ]] || die "$SSHD not found: install the Debian package openssh-server (see tests/interop/apt-packages.txt)"
    command -v ssh-keygen >/dev/null || die "ssh-keygen not found: install openssh-client"
    [[ $(id -u) -eq 0 ]] || die "must run as root (creates user $NC_USER, runs sshd)"

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # the test user must reach authorized_keys (sshd reads it as that user) and the socket
    chmod 755 "$dir"
    stop "$dir"

    if ! id "$NC_USER" >/dev/null 2>&1; then
        useradd -m -s /bin/sh "$NC_USER" || die "cannot create user $NC_USER"
    fi
    # a usable shell and an unlocked account (no password: key login only)
    usermod -s /bin/sh -p '*' "$NC_USER" || die "cannot unlock user $NC_USER"
    mkdir -p /run/sshd
    chmod 755 /run/sshd

    rm -f "$dir/ssh_host_ed25519_key" "$dir/ssh_host_ed25519_key.pub" \
        "$dir/id_ed25519" "$dir/id_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C qkdni-netconfd-host -f "$dir/ssh_host_ed25519_key" </dev/null
    ssh-keygen -q -t ed25519 -N '' -C "$NC_USER@qkdni-test" -f "$dir/id_ed25519" </dev/null
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    chmod 644 "$dir/authorized_keys"

    local sock=$dir/ncxserver.sock attempt port started=0
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 40000))
        port_in_use "$port" && continue

        # netconfd keeps its files (transaction id, the running config saved on commit)
        # in <yuma-home>/data: keep them in <dir>, not in root's ~/.yuma
        mkdir -p "$dir/data"
        # netconfd: --port only tells it which port the subsystem reports (it does not
        # listen on TCP); the subsystem must be given the same PORT@socket.
        (
            cd "$dir"
            HOME=$dir exec "$NETCONFD" --yuma-home="$dir" --no-startup --superuser="$NC_USER" --port="$port" \
                --ncxserver-sockname="$sock" --log="$dir/netconfd.log" --log-level=info \
                </dev/null >"$dir/netconfd.out" 2>&1
        ) &
        echo $! >"$dir/netconfd.pid"
        local i
        for i in $(seq 100); do
            [[ -S $sock ]] && break
            pid_alive "$dir/netconfd.pid" || break
            sleep 0.1
        done
        if [[ ! -S $sock ]]; then
            stop "$dir"
            die "netconfd did not create $sock: $(tail -n 20 "$dir/netconfd.log" "$dir/netconfd.out" 2>/dev/null)"
        fi
        chmod 666 "$sock"

        cat >"$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $NC_USER
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem netconf $SUBSYSTEM --ncxserver-sockname=$port@$sock
EOF
        "$SSHD" -t -f "$dir/sshd_config" || {
            stop "$dir"
            die "sshd rejects $dir/sshd_config"
        }
        "$SSHD" -D -e -f "$dir/sshd_config" </dev/null >"$dir/sshd.log" 2>&1 &
        echo $! >"$dir/sshd.pid"
        for i in $(seq 100); do
            pid_alive "$dir/sshd.pid" || break
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                started=1
                break
            fi
            sleep 0.1
        done
        [[ $started -eq 1 ]] && break
        # lost a race for the port (or sshd failed): try another one
        stop "$dir"
    done
    if [[ $started -ne 1 ]]; then
        die "sshd did not come up: $(tail -n 20 "$dir/sshd.log" 2>/dev/null)"
    fi
    printf '{"addr":"127.0.0.1:%s","user":"%s","key":"%s"}\n' "$port" "$NC_USER" "$dir/id_ed25519"
}

case "${1:-}" in
start | stop)
    [[ $# -eq 2 ]] || die "usage: $0 start|stop <dir>"
    "$1" "$2"
    ;;
*)
    die "usage: $0 start|stop <dir>"
    ;;
esac
