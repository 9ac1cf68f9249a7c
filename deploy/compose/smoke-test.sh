#!/usr/bin/env bash
# Smoke test of the Docker deployment, from a fresh clone: builds the image
# (deploy/docker/build-image.sh: cargo build, then a local or stock base),
# starts deploy/compose/docker-compose.3.yml under a project name of its own,
# waits for a leader, then creates a queue, sends messages, receives and acks
# them all through the cluster, and checks that the queue is empty. Prints
# one verdict line (SMOKE PASS / SMOKE FAIL) and exits 0 only on a pass.
# The cluster, its network and its volumes are always removed (`down -v`),
# whatever happens.
#
# Every step has a time limit (seconds, from the environment):
#   SMOKE_BUILD_TIMEOUT  build-image.sh, cargo included (default 1800)
#   SMOKE_UP_TIMEOUT     compose up, and compose down (default 120)
#   SMOKE_READY_TIMEOUT  leader elected, all nodes reachable and healthy (60)
#   SMOKE_CMD_TIMEOUT    each client command (default 30)
# Other settings: QUORUMQ_IMAGE (default quorumq:local), SMOKE_BASE
# (local|debian, passed to build-image.sh --base; default: its own choice),
# SMOKE_SKIP_BUILD=1 (use an existing image and target/release/quorumq).
#
# Client commands run inside the cluster's network (compose exec), where the
# nodes' advertised names node1..node3 resolve. The nodes' ports are
# published on free host ports (not 7001-7003, so that a cluster already
# running there does not matter); the test checks each from the host.
set -euo pipefail

readonly BUILD_TIMEOUT=${SMOKE_BUILD_TIMEOUT:-1800}
readonly UP_TIMEOUT=${SMOKE_UP_TIMEOUT:-120}
readonly READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-60}
readonly CMD_TIMEOUT=${SMOKE_CMD_TIMEOUT:-30}
readonly MESSAGES=5

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
readonly compose_file=deploy/compose/docker-compose.3.yml
export QUORUMQ_IMAGE=${QUORUMQ_IMAGE:-quorumq:local}
# Any free host port, bound to loopback only.
export QUORUMQ_BIND=127.0.0.1 QUORUMQ_PORT_1=0 QUORUMQ_PORT_2=0 QUORUMQ_PORT_3=0
export QUORUMQ_HTTP_PORT_1=0 QUORUMQ_HTTP_PORT_2=0 QUORUMQ_HTTP_PORT_3=0

# A project name of our own: lower-case letters and digits suit every
# Compose version.
project="qqsmoke$(date +%s)x$$"
start=$SECONDS
step="start"
outcome=""       # PASS once every check passed
passed=""        # what passed, for the verdict
failure=""       # what failed, for the verdict
cluster_started=false

log() { printf 'smoke [%3ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

fail() {
    failure="$step: $*"
    exit 1
}

# `docker compose` (v2) if this docker has it, else docker-compose (v1).
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    step="setup"
    fail "neither \`docker compose\` nor docker-compose is installed"
fi

# A client command in node N's container, bounded in time. Stdin is closed:
# compose v1 exec would otherwise read this script's stdin.
in_node() {
    local node=$1
    shift
    timeout --kill-after=5 "$CMD_TIMEOUT" "${compose_cmd[@]}" --project-name "$project" --file "$compose_file" \
        exec -T "node$node" /usr/local/bin/quorumq --timeout 10s "$@" </dev/null
}

# On every exit: diagnostics on failure, teardown, then the verdict as the
# last line.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $rc -eq 0 && $outcome != PASS ]]; then
        rc=1
    fi
    if [[ $rc -ne 0 && -z $failure ]]; then
        failure="$step: interrupted or unexpected error (exit $rc)"
    fi
    if $cluster_started; then
        if [[ $rc -ne 0 ]]; then
            log "state and last log lines of the cluster, for the failure:"
            timeout 30 "${compose_cmd[@]}" --project-name "$project" --file "$compose_file" ps >&2 || true
            timeout 30 "${compose_cmd[@]}" --project-name "$project" --file "$compose_file" \
                logs --no-color --tail 40 >&2 || true
        fi
        log "tearing down (down -v)"
        timeout --kill-after=10 "$UP_TIMEOUT" "${compose_cmd[@]}" --project-name "$project" \
            --file "$compose_file" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
            || log "compose down failed or timed out"
        local left
        left=$(
            docker ps -aq --filter "label=com.docker.compose.project=$project"
            docker volume ls -q --filter "label=com.docker.compose.project=$project"
            docker network ls -q --filter "label=com.docker.compose.project=$project"
        ) || left="(cannot list)"
        if [[ -n $left ]]; then
            rc=1
            failure="${failure:+$failure; }teardown left containers, volumes or networks of project $project behind"
        fi
    fi
    if [[ $rc -eq 0 ]]; then
        printf 'SMOKE PASS: %s (%ds, project %s, image %s)\n' "$passed" "$((SECONDS - start))" "$project" "$QUORUMQ_IMAGE"
    else
        printf 'SMOKE FAIL: %s (%ds, project %s, image %s)\n' "$failure" "$((SECONDS - start))" "$project" "$QUORUMQ_IMAGE"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The image.
step="build"
if [[ ${SMOKE_SKIP_BUILD:-0} == 1 ]]; then
    log "SMOKE_SKIP_BUILD=1: using the existing image $QUORUMQ_IMAGE"
    docker image inspect "$QUORUMQ_IMAGE" >/dev/null 2>&1 || fail "image $QUORUMQ_IMAGE does not exist"
else
    log "building $QUORUMQ_IMAGE (deploy/docker/build-image.sh, at most ${BUILD_TIMEOUT}s)"
    build_args=(--tag "$QUORUMQ_IMAGE")
    [[ -z ${SMOKE_BASE:-} ]] || build_args+=(--base "$SMOKE_BASE")
    timeout --kill-after=10 "$BUILD_TIMEOUT" bash deploy/docker/build-image.sh "${build_args[@]}" >&2 \
        || fail "deploy/docker/build-image.sh failed or timed out"
fi

# 2. The cluster.
step="compose up"
log "starting 3 nodes, project $project (${compose_cmd[*]})"
cluster_started=true
timeout --kill-after=10 "$UP_TIMEOUT" "${compose_cmd[@]}" --project-name "$project" --file "$compose_file" \
    up -d >&2 || fail "compose up failed or timed out"

# 3. A leader, every node reachable from node1, every container healthy.
step="waiting for a leader"
deadline=$((SECONDS + READY_TIMEOUT))
leader="" status="" health=""
# The containers by node number (docker ps: much faster than compose v1).
containers=()
for n in 1 2 3; do
    id=$(docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=node$n")
    if [[ -n $id ]]; then containers+=("$id"); fi
done
[[ ${#containers[@]} -eq 3 ]] || fail "expected 3 containers, compose lists ${#containers[@]}"
while :; do
    status=$(in_node 1 --json cluster status 2>/dev/null) || status=""
    leader=$(grep -oE '"leader":[0-9]+' <<<"$status" | cut -d: -f2 || true)
    reachable=$(grep -o '"reachable":true' <<<"$status" | wc -l || true)
    health=$(docker inspect --format '{{.State.Health.Status}}' "${containers[@]}" 2>/dev/null | sort | uniq -c | xargs || true)
    if [[ -n $leader && $reachable -eq 3 && $health == "3 healthy" ]]; then
        break
    fi
    if ((SECONDS >= deadline)); then
        fail "no leader with 3 reachable, healthy nodes within ${READY_TIMEOUT}s (leader: ${leader:-none}, reachable: $reachable, health: ${health:-unknown})"
    fi
    sleep 1
done
log "leader: node $leader; 3 nodes reachable and healthy"

# 4. The published ports answer from the host, each with the right node.
step="published ports"
host_cli=target/release/quorumq
if [[ -x $host_cli ]]; then
    for n in 1 2 3; do
        hostport=$(docker port "${containers[n - 1]}" "700$n/tcp" | head -n1) \
            || fail "docker port node$n 700$n/tcp failed"
        [[ -n $hostport ]] || fail "node$n's port 700$n is not published"
        answer=$(timeout "$CMD_TIMEOUT" "$host_cli" --timeout 5s cluster node "$hostport" 2>&1) \
            || fail "node$n's published port $hostport does not answer from the host: $answer"
        [[ $answer == "node $n at node$n:700$n:"* ]] || fail "$hostport answered as another node: $answer"
        # The HTTP endpoint (QUORUMQ_HTTP, port 900N) answers /health.
        if command -v curl >/dev/null 2>&1; then
            httpport=$(docker port "${containers[n - 1]}" "900$n/tcp" | head -n1) \
                || fail "docker port node$n 900$n/tcp failed"
            [[ -n $httpport ]] || fail "node$n's HTTP port 900$n is not published"
            answer=$(timeout "$CMD_TIMEOUT" curl -sS --max-time 5 "http://$httpport/health" 2>&1) \
                || fail "node$n's HTTP endpoint $httpport does not answer /health: $answer"
            [[ $answer == ok ]] || fail "node$n's /health at $httpport answered: $answer"
        fi
    done
    log "published ports answer from the host"
else
    log "no $host_cli: skipping the host-side port check"
fi

# 5. Messages through the cluster: create via node1, send via node2 (which
# follows the leader by its advertised name), receive and ack via node3.
step="queue create"
queue=smoke
in_node 1 --cluster node1:7001,node2:7002,node3:7003 queue create "$queue" >&2 || fail "queue create failed"

step="send"
bodies=()
for i in $(seq 1 "$MESSAGES"); do bodies+=("msg-$project-$i"); done
in_node 2 send "$queue" "${bodies[@]}" >&2 || fail "send failed"
log "sent $MESSAGES messages"

step="receive and ack"
received=()
deadline=$((SECONDS + READY_TIMEOUT))
while [[ ${#received[@]} -lt $MESSAGES ]]; do
    ((SECONDS < deadline)) || fail "received ${#received[@]} of $MESSAGES messages within ${READY_TIMEOUT}s"
    out=$(in_node 3 recv "$queue" --max 100 --wait 2s --json --ack) || fail "recv --ack failed"
    while IFS= read -r body; do
        if [[ -n $body ]]; then received+=("$body"); fi
    done < <(grep -oE '"body":"[^"]*"' <<<"$out" | sed -e 's/^"body":"//' -e 's/"$//')
done
want=$(printf '%s\n' "${bodies[@]}" | sort)
got=$(printf '%s\n' "${received[@]}" | sort)
[[ $want == "$got" ]] || fail "received bodies differ from those sent: got [$(xargs <<<"$got")]"
log "received and acked $MESSAGES messages"

step="queue stats"
stats=$(in_node 1 --json queue stats "$queue") || fail "queue stats failed"
for field in '"ready":0' '"in_flight":0' "\"sent_total\":$MESSAGES" "\"acked_total\":$MESSAGES"; do
    grep -Eq "${field}[,}]" <<<"$stats" || fail "queue stats lack $field: $stats"
done

step="done"
passed="3-node compose cluster up with leader node $leader; $MESSAGES messages sent, received and acked; queue empty (ready 0, in flight 0); torn down"
outcome=PASS
