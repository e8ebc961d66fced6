#!/bin/sh
# A Ray node in a container (docker/compose.yaml's ray-head and ray-worker*): `relay-ray-node
# <ray start options>`. It starts the node the way `make up` does, `ray start` without --block
# (relay.infra.stack): with --block, `ray start` stays the parent of every Ray daemon, and a
# finished job's cleanup SIGTERMed the whole head (DEVELOPERS.md). Here `ray start` returns once
# the daemons run, and this script waits in the foreground:
#   - SIGTERM or SIGINT (`docker stop`, forwarded by the container's init) runs `ray stop`, which
#     stops this container's Ray within RAY_STOP_GRACE_S, and the script exits 0;
#   - a node whose raylet (or, on the head, GCS) has died makes it exit 1, so the container's
#     restart policy starts a fresh node instead of leaving a shell with no Ray in it.
set -eu

grace="${RAY_STOP_GRACE_S:-20}"
poll="${RAY_NODE_POLL_S:-5}"
stopping=0

stop_node() {
    stopping=1
    echo "relay-ray-node: stopping Ray (grace ${grace}s)"
    ray stop --grace-period "$grace" || true
}

# Whether a process whose command line matches $1 runs in this container (its own PID
# namespace: only this node's processes are visible). The bracket keeps grep from matching
# its own command line.
running() {
    grep -qas "$1" /proc/[0-9]*/cmdline
}

node_alive() {
    running '[r]aylet/raylet' || return 1
    if [ "$head" = 1 ]; then
        running '[g]cs/gcs_server' || return 1
    fi
}

head=0
for arg in "$@"; do
    [ "$arg" = "--head" ] && head=1
    if [ "$arg" = "--block" ]; then
        echo "relay-ray-node: leave out --block; this script waits for the node itself" >&2
        exit 2
    fi
done

trap stop_node TERM INT
ray start "$@"
echo "relay-ray-node: Ray started; waiting (SIGTERM stops it)"

while [ "$stopping" = 0 ]; do
    if ! node_alive; then
        [ "$stopping" = 1 ] && break
        echo "relay-ray-node: the node's raylet or GCS has exited" >&2
        exit 1
    fi
    # In the background, so a signal interrupts `wait` at once instead of after the sleep.
    sleep "$poll" &
    wait $! || true
done
exit 0
