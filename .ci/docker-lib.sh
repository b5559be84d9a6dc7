# Shell functions shared by the container tests (.ci/docker-smoke, .ci/docker-chaos):
# source it after setting LIB_NAME (the name `say` and `skip` print) and `started=$SECONDS`.
#
# No image registry needs to answer: unless BASE_IMAGE is set, the base is a Debian
# bookworm made here by debootstrap (batchtasks-base:bookworm). Without a container
# engine that can be started here, `skip` says so in one line and exits 0.

skip() { echo "Skipping the ${LIB_NAME:-Docker} test: $*."; exit 0; }
say() { printf '[%s %3ds] %s\n' "${LIB_TAG:-docker}" $((SECONDS - ${started:-0})) "$*"; }

wait_until() {  # wait_until SECONDS COMMAND...
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        (( SECONDS >= deadline )) && return 1
        sleep 1
    done
}

ensure_tools() {
    local missing=()
    command -v docker >/dev/null || missing+=(docker.io)
    command -v dockerd >/dev/null || docker info >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    [ -n "${BASE_IMAGE:-}" ] || command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || skip "${missing[*]} missing"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null 2>&1 \
        || skip "could not install ${missing[*]}"
}

ensure_engine() {
    docker info >/dev/null 2>&1 && return 0
    { [ "$(id -u)" -eq 0 ] && command -v dockerd >/dev/null; } || skip "no Docker engine runs"
    say "starting dockerd (log: /tmp/docker-dockerd.log)"
    nohup dockerd >/tmp/docker-dockerd.log 2>&1 &
    wait_until 60 docker info || skip "dockerd did not start (see /tmp/docker-dockerd.log)"
}

debian_mirror() {  # the Debian mirror apt uses here
    local mirror
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '($1 == "URIs:" || $1 == "deb") && $2 ~ /\/debian\/?$/ { print $2; exit }') || true
    echo "${mirror:-http://deb.debian.org/debian}"
}

ensure_base() {
    if [ -n "${BASE_IMAGE:-}" ]; then return 0; fi
    export BASE_IMAGE=batchtasks-base:bookworm
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    local root; root=$(mktemp -d)
    say "debootstrap bookworm from $(debian_mirror) for $BASE_IMAGE"
    debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >/dev/null
    tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
}

# pip inside the build trusts this machine's CAs (an HTTPS-intercepting proxy); the file
# is git-ignored and copied only into the builder stage. Sets ca_copied when it copied it,
# for remove_build_ca.
ca_copied=""
copy_build_ca() {
    if [ ! -e docker/build-ca.crt ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt docker/build-ca.crt && ca_copied=1
    fi
    return 0
}
remove_build_ca() { [ -z "$ca_copied" ] || rm -f docker/build-ca.crt; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
secret() { python3 -c "import secrets; print(secrets.token_urlsafe(${1:-16}))"; }

# full_disk's disk (bench/chaos/scenarios.py): PostgreSQL's data on an ext4 of its own
# (a sparse 4 GiB file in WORK, loop-mounted), which the scenario fills and empties
# again: `mount_pg_disk WORK ENV_FILE` after the images are built sets pg_disk (the mount
# point; empty where it cannot be done: not root, no loop device) and adds CHAOS_PG_DISK
# (the data folder) to ENV_FILE; `umount_pg_disk` after the stack is down. Elsewhere
# the data stays on the named volume and full_disk says so.
pg_disk=""
mount_pg_disk() {
    local work=$1 env_file=$2
    if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null \
        && truncate -s 4G "$work/pgdisk.img" && mkfs.ext4 -q -m 0 -F "$work/pgdisk.img" \
        && mkdir "$work/pgdisk" && mount -o loop "$work/pgdisk.img" "$work/pgdisk" 2>/dev/null
    then
        pg_disk="$work/pgdisk"
        mkdir "$pg_disk/data"
        chown "$(docker run --rm batchtasks-smoke-postgres:latest id -u)" "$pg_disk/data"
        echo "CHAOS_PG_DISK=$pg_disk/data" >> "$env_file"
        say "PostgreSQL's data on a 4 GiB ext4 of its own ($pg_disk)"
    else
        say "no file system of its own for PostgreSQL's data here: full_disk cannot run"
    fi
}
umount_pg_disk() { [ -z "$pg_disk" ] || umount "$pg_disk" || true; }

# The legacy builder: compose v1 with BuildKit off.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
