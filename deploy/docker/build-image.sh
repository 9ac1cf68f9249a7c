#!/usr/bin/env bash
# Builds the quorumq node image (default tag quorumq:local) from this
# checkout: compiles the release binary with cargo, then `docker build`s
# deploy/docker/Dockerfile on top of a base image:
#
#   --base debian   the stock debian:bookworm-slim (pulled if not present),
#                   or the image --base-image names (a mirror's copy, say)
#   --base local    quorumq-base:local, a minimal root filesystem made here
#                   from the host: the dynamic loader and the libraries
#                   `ldd quorumq` lists, /etc/passwd and /etc/group with user
#                   10001, /tmp and /data. Needs no registry at all.
#   (default)       debian if `docker image inspect debian:bookworm-slim`
#                   succeeds (the image is already here), else local.
#
# Idempotent: cargo and docker reuse what is up to date, and the local base
# is imported again only when its content changed.
#
# Usage: deploy/docker/build-image.sh [--base local|debian] [--tag IMAGE]
#            [--base-image IMAGE] [--strip] [--no-cargo]
#   --tag IMAGE         the image to build (default quorumq:local)
#   --base-image IMAGE  the stock base for --base debian (any image with a
#                       glibc at least as new as this host's)
#   --strip             drop the binary's debug line tables (65 MB -> 15 MB)
#   --no-cargo          use target/release/quorumq as it is
# Environment: QUORUMQ_IMAGE (the tag; --tag wins), CARGO (the cargo to use).
set -euo pipefail

STOCK_BASE=debian:bookworm-slim
readonly LOCAL_BASE=quorumq-base:local
readonly BASE_LABEL=io.quorumq.base.sha256

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
say() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

base=auto
tag=${QUORUMQ_IMAGE:-quorumq:local}
strip_debug=false
run_cargo=true
while [[ $# -gt 0 ]]; do
    case $1 in
        --base) [[ $# -ge 2 ]] || die "--base needs a value: local or debian"; base=$2; shift 2 ;;
        --base=*) base=${1#--base=}; shift ;;
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; tag=$2; shift 2 ;;
        --tag=*) tag=${1#--tag=}; shift ;;
        --base-image) [[ $# -ge 2 ]] || die "--base-image needs a value"; STOCK_BASE=$2; base=debian; shift 2 ;;
        --base-image=*) STOCK_BASE=${1#--base-image=}; base=debian; shift ;;
        --strip) strip_debug=true; shift ;;
        --no-cargo) run_cargo=false; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $base in
    auto|local|debian) ;;
    *) die "--base must be local or debian (got \"$base\")" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

command -v docker >/dev/null || die "docker is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "cannot talk to the Docker engine (is it running, and may this user use it?)"
# The docker CLI uses BuildKit only through the buildx plugin; without the
# plugin, DOCKER_BUILDKIT=1 makes `docker build` fail, so use the classic
# builder, which this Dockerfile is written for too.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

# 1. The binary.
binary=$repo/target/release/quorumq
if $run_cargo; then
    say "building the release binary (cargo build --release -p quorumq)"
    "${CARGO:-cargo}" build --release --locked -p quorumq
fi
[[ -x $binary ]] || die "$binary is missing (run without --no-cargo)"

work=$(mktemp -d "${TMPDIR:-/tmp}/quorumq-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 2. The base image.
if [[ $base == auto ]]; then
    if docker image inspect "$STOCK_BASE" >/dev/null 2>&1; then
        base=debian
    else
        base=local
        say "$STOCK_BASE is not present here: using a local base made from this host" \
            "(pass --base debian to pull the stock one instead)"
    fi
fi

# Makes $LOCAL_BASE from this host's loader and libraries.
build_local_base() {
    local rootfs=$work/rootfs tarball=$work/rootfs.tar
    mkdir -p "$rootfs"/{etc,tmp,data,usr/local/bin}
    chmod 1777 "$rootfs/tmp"
    chmod 0755 "$rootfs/data"

    # Every absolute path ldd prints: `libc.so.6 => /lib/.../libc.so.6 (0x…)`
    # and the loader `/lib64/ld-linux-x86-64.so.2 (0x…)`. Each is copied,
    # symlinks followed, to the path the binary asks for.
    local ldd_out
    ldd_out=$(ldd "$binary" 2>&1) || true
    if grep -q 'not found' <<<"$ldd_out"; then
        die "ldd cannot resolve every library of $binary: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ')"
    fi
    local libs=() lib libdir
    if grep -q 'not a dynamic executable\|statically linked' <<<"$ldd_out"; then
        say "the binary is statically linked: the base holds no libraries"
    else
        mapfile -t libs < <(grep -oE '(^|[[:space:]])/[^[:space:]]+' <<<"$ldd_out" | sed 's/^[[:space:]]*//' | sort -u)
        [[ ${#libs[@]} -gt 0 ]] || die "ldd listed no libraries for $binary: $ldd_out"
        # Name resolution (getaddrinfo) may load NSS modules at run time; since
        # glibc 2.34 they are inside libc, before that they are separate files.
        libdir=$(dirname "$(grep -oE '/[^[:space:]]*/libc\.so\.[0-9]+' <<<"$ldd_out" | head -n1)")
        for lib in "$libdir"/libnss_files.so.2 "$libdir"/libnss_dns.so.2 "$libdir"/libresolv.so.2; do
            [[ -e $lib ]] && libs+=("$lib")
        done
        for lib in "${libs[@]}"; do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    fi

    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
quorumq:x:10001:10001:quorumq:/data:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
quorumq:x:10001:
nogroup:x:65534:
EOF
    # Docker bind-mounts /etc/hosts and /etc/resolv.conf; look in both.
    printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
    chmod 0644 "$rootfs"/etc/*

    # A reproducible tarball (no root needed): everything root-owned except
    # /data, which belongs to the node's user. Its hash says whether the base
    # changed since the last import.
    local tar_opts=(--sort=name --mtime=@0 --numeric-owner --format=gnu)
    tar "${tar_opts[@]}" --owner=0 --group=0 --exclude=./data -C "$rootfs" -cf "$tarball" .
    tar "${tar_opts[@]}" --owner=10001 --group=10001 -C "$rootfs" -rf "$tarball" ./data
    local hash have
    hash=$(sha256sum "$tarball" | cut -d' ' -f1)
    have=$(docker image inspect --format "{{ index .Config.Labels \"$BASE_LABEL\" }}" "$LOCAL_BASE" 2>/dev/null || true)
    if [[ $have == "$hash" ]]; then
        say "local base $LOCAL_BASE is up to date (${#libs[@]} files from the host)"
        return
    fi
    say "importing local base $LOCAL_BASE (${#libs[@]} files from the host: ${libs[*]})"
    docker import \
        --change "LABEL $BASE_LABEL=$hash" \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --message "quorumq local base: host loader and libraries" \
        "$tarball" "$LOCAL_BASE" >/dev/null
}

if [[ $base == local ]]; then
    build_local_base
    base_image=$LOCAL_BASE
else
    base_image=$STOCK_BASE
    host_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null || echo unknown)
    say "using the stock base $STOCK_BASE; the binary needs a glibc at least as new as" \
        "this host's ($host_glibc; bookworm has 2.36), else use --base local"
fi

# 3. The image.
context=$work/context
mkdir -p "$context/data"
cp deploy/docker/Dockerfile "$context/Dockerfile"
if $strip_debug; then
    strip --strip-debug -o "$context/quorumq" "$binary"
else
    cp "$binary" "$context/quorumq"
fi
say "building $tag on $base_image"
if ! docker build --build-arg "BASE_IMAGE=$base_image" --tag "$tag" "$context"; then
    if [[ $base == debian ]] && ! docker image inspect "$base_image" >/dev/null 2>&1; then
        die "docker build failed: could the engine pull $base_image? (--base local needs no registry)"
    fi
    die "docker build failed (see above)"
fi

# 4. The image must at least run its own binary.
version=$(docker run --rm --entrypoint /usr/local/bin/quorumq "$tag" --version) \
    || die "the image $tag does not run its binary (see the error above)"
say "built $tag ($version, base $base_image, $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
