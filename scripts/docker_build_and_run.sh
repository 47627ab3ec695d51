#!/usr/bin/env bash
# Builds the TARPO image without a daemon (podman) and runs a short pipeline inside it, the way a user runs it:
# a fresh clone of this repository mounted at /workspace, `--user UID:GID`, no network. Then checks that every
# file the run wrote on the host belongs to that uid (not to root), and prints the time of each phase.
#
#   1. base   the image to build on (BASE_IMAGE). If it does not exist and it is the local Debian base
#             (the default), it is made here: debootstrap from Debian's packages, then `podman import`.
#             No registry is needed. Skipped when the image exists.
#   2. build  `podman build --build-arg BASE_IMAGE=...`; with WHEELS set (default: /opt/wheels when it holds a
#             torch wheel), that directory is mounted into the build and given to pip as PIP_FIND_LINKS, so a
#             CPU torch wheel on disk is used instead of the multi-GB CUDA build from PyPI. Layer cache: a second
#             run rebuilds only what changed.
#   3. run    in a fresh clone (of HEAD: commit first) owned by RUN_UID: `python cli.py --help`, then
#             `dvc exp run` with a short profile (SHORT_SETS), `dvc repro` (up to date after it), then the uid
#             check on everything the run wrote.
#
# Usage: scripts/docker_build_and_run.sh [--dry-run]   (--dry-run prints every phase's commands, as if nothing
#        existed yet, and runs none)
# Environment (defaults in brackets):
#   ENGINE [podman]   BASE_IMAGE [localhost/tarpo-base:bookworm]   IMAGE [localhost/tarpo:local]
#   WHEELS [/opt/wheels if it holds torch-*.whl, else empty = PyPI]   WORK [/tmp/tarpo-docker]
#   RUN_UID [your uid; 1234 when run as root, made as user tarpo-run if missing]   RUN_GID [= RUN_UID's group]
#   CA_CERT [$PIP_CERT, else $SSL_CERT_FILE, else none]: CA bundle for pip inside the build
#   MIRROR [http://deb.debian.org/debian]   SUITE [bookworm]   SHORT_SETS [all five stages in a few minutes: see the script]
#   ENGINE_OPTS [--runtime runc when runc is installed]   CONTAINER_OPTS [--ulimit nofile=<hard>:<hard> --ulimit nproc=32768:32768]
# Exit codes: 0 ok, 1 a phase failed, 2 a missing tool or bad setting (one line saying which).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

DRY_RUN=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "docker_build_and_run.sh: unknown argument '$arg' (only --dry-run, --help)" >&2; exit 2 ;;
    esac
done

ENGINE="${ENGINE:-podman}"
LOCAL_BASE="localhost/tarpo-base:bookworm"
BASE_IMAGE="${BASE_IMAGE:-$LOCAL_BASE}"
IMAGE="${IMAGE:-localhost/tarpo:local}"
WORK="${WORK:-/tmp/tarpo-docker}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"
if [[ -z "${WHEELS+set}" ]]; then
    WHEELS=""
    compgen -G "/opt/wheels/torch-*.whl" >/dev/null && WHEELS=/opt/wheels
fi
# A TLS-intercepting proxy (this sandbox's egress, many company networks) signs PyPI's certificate with its own CA,
# which the base image does not trust: the host's bundle is mounted into the build and given to pip as PIP_CERT.
CA_CERT="${CA_CERT-${PIP_CERT:-${SSL_CERT_FILE:-}}}"
if [[ -z "${RUN_UID:-}" ]]; then
    RUN_UID="$(id -u)"
    [[ "$RUN_UID" == 0 ]] && RUN_UID=1234
fi
# Sandboxes and some CI runners have no CAP_SYS_RESOURCE and hybrid cgroups (v1 controllers + a v2 mount): podman's
# default runtime crun refuses hybrid cgroups ("cgroups in hybrid mode not supported") and podman's default limits
# (nofile 1048576, nproc 4194304) cannot be set there ("setrlimit RLIMIT_NOFILE: Operation not permitted"). runc
# copes with hybrid cgroups; the limits below are within what such a host allows. Set both to "" to use the engine's.
if [[ -z "${ENGINE_OPTS+set}" ]]; then
    ENGINE_OPTS=""
    command -v runc >/dev/null && ENGINE_OPTS="--runtime runc"
fi
NOFILE="$(ulimit -Hn)"
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576
CONTAINER_OPTS="${CONTAINER_OPTS---ulimit nofile=$NOFILE:$NOFILE --ulimit nproc=32768:32768}"
read -r -a ENGINE_ARGS <<<"$ENGINE_OPTS"
read -r -a CONTAINER_ARGS <<<"$CONTAINER_OPTS"
# The short profile: every stage runs for real (prepare, warm-up, TARPO, evaluate, register), in minutes.
SHORT_SETS="${SHORT_SETS:-data.train_size=200 data.eval_size=16 warmup.steps=20 train.steps=4 train.checkpoint_every=2 eval.every=0 eval.num_samples=2 eval.pass_k=[1,2]}"

fail() { echo "docker_build_and_run.sh: $*" >&2; exit 2; }
x() {  # print a command, run it unless --dry-run
    echo "+ $*" >&2
    [[ -n "$DRY_RUN" ]] || "$@"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
declare -A TIMES=()

command -v "$ENGINE" >/dev/null || [[ -n "$DRY_RUN" ]] \
    || fail "ENGINE=$ENGINE is not on PATH (Debian: apt-get install podman)"
[[ -z "$WHEELS" || -d "$WHEELS" ]] || fail "WHEELS=$WHEELS is not a directory"
[[ -z "$CA_CERT" || -f "$CA_CERT" ]] || fail "CA_CERT=$CA_CERT is not a file"
[[ "$RUN_UID" =~ ^[0-9]+$ ]] || fail "RUN_UID=$RUN_UID is not a number"

# --- 1. base -------------------------------------------------------------------------------------------------
phase_base() {
    if [[ -z "$DRY_RUN" ]] && "$ENGINE" image exists "$BASE_IMAGE"; then
        echo "base: $BASE_IMAGE exists, kept"
        TIMES[base]="cached"
        return
    fi
    [[ "$BASE_IMAGE" == "$LOCAL_BASE" ]] \
        || fail "BASE_IMAGE=$BASE_IMAGE does not exist here; pull it, or unset BASE_IMAGE to make $LOCAL_BASE"
    command -v debootstrap >/dev/null || [[ -n "$DRY_RUN" ]] \
        || fail "making $LOCAL_BASE needs debootstrap (Debian: apt-get install debootstrap)"
    [[ "$(id -u)" == 0 || -n "$DRY_RUN" ]] || fail "making $LOCAL_BASE needs root (debootstrap)"
    local start rootfs="$WORK/rootfs"
    start=$(now)
    x rm -rf "$rootfs"
    x mkdir -p "$WORK"
    # minbase: apt and dpkg only; the Dockerfile installs python3, venv, git and certificates itself, as it does
    # on the CUDA base.
    x debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR"
    # the downloaded .debs and package lists: 80 MB that every image on this base would carry
    x find "$rootfs/var/cache/apt/archives" "$rootfs/var/lib/apt/lists" -type f -delete
    echo "+ tar -C $rootfs -c . | $ENGINE import --change 'CMD [\"/bin/bash\"]' - $LOCAL_BASE" >&2
    [[ -n "$DRY_RUN" ]] || tar -C "$rootfs" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE"
    x rm -rf "$rootfs"
    TIMES[base]="$(secs "$start" "$(now)") s"
}

# --- 2. build ------------------------------------------------------------------------------------------------
phase_build() {
    local start args=("${ENGINE_ARGS[@]}" build "${CONTAINER_ARGS[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
    # The build reaches Debian's archive and PyPI through the host's network (no bridge/iptables needed).
    args+=(--network host)
    if [[ -n "$WHEELS" ]]; then
        args+=(--volume "$WHEELS:/opt/local-wheels:ro" --build-arg "PIP_FIND_LINKS=/opt/local-wheels")
    fi
    if [[ -n "$CA_CERT" ]]; then
        args+=(--volume "$CA_CERT:/opt/host-ca.crt:ro" --build-arg "PIP_CERT=/opt/host-ca.crt")
    fi
    start=$(now)
    x "$ENGINE" "${args[@]}" "$REPO"
    TIMES[build]="$(secs "$start" "$(now)") s"
}

# --- 3. run --------------------------------------------------------------------------------------------------
run_user() {  # the host account that owns the clone: made (as tarpo-run) when root asks for a uid nobody has
    if [[ -z "$DRY_RUN" ]] && ! getent passwd "$RUN_UID" >/dev/null; then
        [[ "$(id -u)" == 0 ]] || fail "RUN_UID=$RUN_UID has no account here and only root can make one"
        x useradd --uid "$RUN_UID" --user-group --no-create-home --shell /usr/sbin/nologin tarpo-run
    fi
    if [[ -z "${RUN_GID:-}" ]]; then
        RUN_GID="$(getent passwd "$RUN_UID" | cut -d: -f4 || true)"
        RUN_GID="${RUN_GID:-$RUN_UID}"
    fi
}

phase_run() {
    local start clone="$WORK/clone" sets=() set
    run_user
    for set in $SHORT_SETS; do sets+=(-S "$set"); done
    start=$(now)
    x rm -rf "$clone"
    x git clone --quiet "$REPO" "$clone"
    if [[ "$(id -u)" == 0 ]]; then x chown -R "$RUN_UID:$RUN_GID" "$clone"; fi
    [[ -n "$DRY_RUN" ]] || touch -d '-1 second' "$WORK/.before-run"
    local run=("$ENGINE" "${ENGINE_ARGS[@]}" run "${CONTAINER_ARGS[@]}" --rm --network none --user "$RUN_UID:$RUN_GID" -v "$clone:/workspace" "$IMAGE")
    echo "+ ${run[*]}   (the default command: cli.py --help)" >&2
    if [[ -z "$DRY_RUN" ]]; then
        "${run[@]}" >"$WORK/help.txt"
        grep -q "prepare" "$WORK/help.txt" \
            || { echo "the image's default command did not print cli.py --help:" >&2; cat "$WORK/help.txt" >&2; exit 1; }
    fi
    x "${run[@]}" python cli.py --help >/dev/null
    local job_start
    job_start=$(now)
    x "${run[@]}" dvc exp run "${sets[@]}"
    TIMES[job]="$(secs "$job_start" "$(now)") s"
    # exp run leaves its params and results in the workspace: a plain `dvc repro` now has nothing to do
    echo "+ ${run[*]} dvc repro" >&2
    if [[ -z "$DRY_RUN" ]]; then
        "${run[@]}" dvc repro | tee "$WORK/repro.txt"
        grep -q "up to date" "$WORK/repro.txt" || { echo "dvc repro after dvc exp run was not up to date" >&2; exit 1; }
    fi
    TIMES[run]="$(secs "$start" "$(now)") s"
    [[ -n "$DRY_RUN" ]] || check_owner "$clone"
}

check_owner() {  # every file the run made or changed in the clone belongs to RUN_UID:RUN_GID
    local clone="$1" wrong expected
    wrong="$(find "$clone" -newer "$WORK/.before-run" \( ! -uid "$RUN_UID" -o ! -gid "$RUN_GID" \) -print)"
    if [[ -n "$wrong" ]]; then
        echo "written with another owner than $RUN_UID:$RUN_GID:" >&2
        echo "$wrong" | head -20 | xargs stat -c '  %u:%g %n' >&2
        exit 1
    fi
    for expected in data/prepared/train.jsonl models/warmup models/tarpo metrics/train.json metrics/eval.json \
                    metrics/register.json plots/train.csv mlflow.db dvc.lock; do
        [[ -e "$clone/$expected" ]] || { echo "the run did not write $expected" >&2; exit 1; }
    done
    echo "outputs on the host (uid:gid path), written after the run started: $(find "$clone" -newer "$WORK/.before-run" | wc -l)"
    (cd "$clone" && stat -c '  %u:%g %U %n' data/prepared/train.jsonl models/tarpo metrics/eval.json mlflow.db dvc.lock)
}

main() {
    local size
    phase_base
    phase_build
    phase_run
    if [[ -z "$DRY_RUN" ]]; then
        size="$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")"
        echo "image: $IMAGE, $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }') ($size bytes), base $BASE_IMAGE"
        echo "times: base ${TIMES[base]}, build ${TIMES[build]}, run ${TIMES[run]} (of which dvc exp run ${TIMES[job]})"
    fi
}

main; exit  # one line, parsed whole before it runs: editing this file during a long build cannot derail it
