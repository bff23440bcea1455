# shellcheck shell=bash
# Shared helpers for scripts/bench-*.sh: tool checks, the cached benchmark context, measuring one command
# (wall, CPU, peak RSS) and printing markdown rows. Source it; it defines functions and sets nothing else
# apart from LC_ALL=C (so /usr/bin/time, awk and sort agree on the decimal point).

export LC_ALL=C

BENCH_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench_log() { printf '[bench] %s\n' "$*" >&2; }
bench_die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# bench_require PATH:PACKAGE... : apt-get installs each PACKAGE whose PATH is missing (one apt run in all).
bench_require() {
    local spec missing=()
    for spec in "$@"; do
        [[ -x ${spec%%:*} ]] || missing+=("${spec#*:}")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || bench_die "missing ${missing[*]} and no apt-get to install them"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    bench_log "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# bench_idpb_bin: prints the docker-idpb binary to use: $IDPB_BIN if set, else a fresh release build.
bench_idpb_bin() {
    if [[ -n ${IDPB_BIN:-} ]]; then
        [[ -x $IDPB_BIN ]] || bench_die "IDPB_BIN=$IDPB_BIN is not executable"
        printf '%s\n' "$IDPB_BIN"
        return
    fi
    bench_log "cargo build --release"
    (cd "$BENCH_REPO_ROOT" && cargo build --release --quiet) >&2
    printf '%s\n' "$BENCH_REPO_ROOT/target/release/docker-idpb"
}

# The context generator. Everything derives from one seeded PRNG (Python's Mersenne Twister: stable across
# Python versions for random(), choices() and randbytes()), with fixed modes and mtimes, so every machine
# gets the same tree and the same layer digests. 2,006 files, 300 MiB:
#   src/mod-NN/file-NNNN.txt  2,000 text files of 256 B to 12 KiB (about 12 MiB)
#   logs/app-{1,2,3}.log      64 + 48 + 32 MiB of log lines (gzip -1 shrinks them about 2.9x)
#   data/blob-{1,2,3}.bin     64 + 48 + 32 MiB of pseudo-random bytes (incompressible)
# Changing this text changes the cache key, so the next run regenerates.
# shellcheck disable=SC2034  # read by the bench scripts
BENCH_CONTEXT_DESC='2,000 small text files, 144 MiB of log text, 144 MiB of random data'
BENCH_CONTEXT_PY=$(
    cat <<'PY'
import itertools, os, random, sys

root = sys.argv[1]
MIB = 1 << 20
EPOCH = 1704067200  # 2024-01-01T00:00:00Z, for every file and directory
rng = random.Random(20240601)
vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)]
zipf = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
levels = ["INFO"] * 8 + ["DEBUG"] * 4 + ["WARN", "ERROR"]

def words(k):
    return rng.choices(vocab, cum_weights=zipf, k=k)

def prose(size):
    w = words(size // 5 + 12)
    lines = (" ".join(w[i:i + 12]) for i in range(0, len(w), 12))
    return ("\n".join(lines).encode()[: size - 1]) + b"\n"

def log_chunks():
    line = 0
    while True:
        w, lv, out = words(120000), rng.choices(levels, k=10000), []
        for i in range(10000):
            line += 1
            out.append("2024-06-01T%02d:%02d:%02d.%03dZ %-5s worker-%d %s" % (
                line // 3600000 % 24, line // 60000 % 60, line // 1000 % 60, line % 1000,
                lv[i], line % 7, " ".join(w[i * 12:i * 12 + 12])))
        yield ("\n".join(out) + "\n").encode()

def random_chunks():
    while True:
        yield rng.randbytes(8 * MIB)

def write(rel, chunks, size):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        for chunk in chunks:
            f.write(chunk[:left])
            left -= min(left, len(chunk))
            if not left:
                break

for d in range(50):
    for n in range(40):
        data = prose(rng.randint(256, 12 * 1024))
        write("src/mod-%02d/file-%04d.txt" % (d, d * 40 + n), [data], len(data))
for i, mib in enumerate((64, 48, 32), 1):
    write("logs/app-%d.log" % i, log_chunks(), mib * MIB)
for i, mib in enumerate((64, 48, 32), 1):
    write("data/blob-%d.bin" % i, random_chunks(), mib * MIB)

for top, dirs, files in os.walk(root, topdown=False):
    for name in files:
        os.chmod(os.path.join(top, name), 0o644)
        os.utime(os.path.join(top, name), (EPOCH, EPOCH))
    os.chmod(top, 0o755)
    os.utime(top, (EPOCH, EPOCH))
PY
)

# bench_context DIR: prints the path of the benchmark context, generating it under DIR unless a context of
# the current generator is already there (older generations are removed).
bench_context() {
    local dir=$1 key ctx old
    key=$(printf '%s' "$BENCH_CONTEXT_PY" | sha256sum | cut -c1-12)
    ctx=$dir/context-$key
    if [[ ! -d $ctx ]]; then
        mkdir -p "$dir"
        for old in "$dir"/context-*; do
            if [[ -e $old ]]; then rm -rf -- "$old"; fi
        done
        bench_log "generating the benchmark context in $ctx (once; cached for later runs)"
        command -v python3 >/dev/null || bench_die "python3 is needed to generate the context"
        python3 -c "$BENCH_CONTEXT_PY" "$ctx.tmp"
        mv -- "$ctx.tmp" "$ctx" # only a complete tree gets the final name
    fi
    printf '%s\n' "$ctx"
}

# bench_context_summary CTX: prints "FILES BYTES" (regular files, their total size).
bench_context_summary() {
    find "$1" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { printf "%d %d\n", n, s }'
}

# bench_warm_cache CTX: reads every file once so each tool starts from the same warm page cache.
bench_warm_cache() {
    find "$1" -type f -exec cat -- {} + >/dev/null
}

# bench_time RESULTS LOG CMD...: runs CMD under /usr/bin/time and appends "WALL USER SYS MAXRSS_KIB" to
# RESULTS. CMD's output goes to LOG, shown on failure. Dirty pages are flushed first (untimed), so one
# run's writeback does not land in the next run's time. The peak RSS of a shell wrapper is the largest of
# its children's.
bench_time() {
    local results=$1 log=$2
    shift 2
    sync
    if ! /usr/bin/time -f '%e %U %S %M' -o "$log.time" "$@" >"$log" 2>&1; then
        bench_log "failed: $*"
        tail -n 20 "$log" >&2
        return 1
    fi
    tail -n 1 "$log.time" >>"$results"
}

# bench_stats RESULTS: prints nine numbers, median/min/max of wall seconds, CPU seconds (user+sys of the
# same run) and peak RSS in MiB.
bench_stats() {
    local results=$1 col
    for col in 1 2 3; do
        awk -v c="$col" '{ print (c == 1 ? $1 : c == 2 ? $2 + $3 : $4 / 1024) }' "$results" | sort -g |
            awk '{ v[NR] = $1 }
                 END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                       printf "%s %s %s ", m, v[1], v[NR] }'
    done
    echo
}

# bench_largest_blob LAYOUT: prints the size in bytes of the largest blob of an OCI layout (the layer).
bench_largest_blob() {
    find "$1/blobs/sha256" -type f -printf '%s\n' | sort -n | tail -n 1
}

# bench_mib BYTES: prints BYTES in MiB with one decimal.
bench_mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# bench_row LABEL RESULTS LAYER_BYTES INPUT_BYTES: prints one markdown row: wall, CPU and peak RSS as
# "median (min–max)", then the layer size and the input throughput at the median wall time.
bench_row() {
    local label=$1 results=$2 layer=$3 input=$4 s
    read -ra s <<<"$(bench_stats "$results")"
    awk -v label="$label" -v layer="$layer" -v input="$input" \
        -v wm="${s[0]}" -v w0="${s[1]}" -v w1="${s[2]}" -v cm="${s[3]}" -v c0="${s[4]}" -v c1="${s[5]}" \
        -v rm="${s[6]}" -v r0="${s[7]}" -v r1="${s[8]}" \
        'BEGIN { printf "| %s | %.2f (%.2f–%.2f) | %.2f (%.2f–%.2f) | %.1f (%.1f–%.1f) | %.1f | %.0f |\n",
                 label, wm, w0, w1, cm, c0, c1, rm, r0, r1, layer / 1048576, input / 1048576 / wm }'
}

bench_table_header() {
    echo "| tool | wall s | CPU s (user+sys) | peak RSS MiB | layer MiB | context MiB/s |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
}

# bench_median_of RESULTS FIELD: median of one column: wall (s), cpu (s) or rss (MiB).
bench_median_of() {
    local stats
    read -ra stats <<<"$(bench_stats "$1")"
    case $2 in
    wall) echo "${stats[0]}" ;;
    cpu) echo "${stats[3]}" ;;
    rss) echo "${stats[6]}" ;;
    *) bench_die "bench_median_of: unknown field $2" ;;
    esac
}

# bench_cells RESULTS: prints the "wall | CPU | peak RSS" cells of a markdown row (no outer pipes), each as
# "median (min–max)", for rows whose other cells the caller builds.
bench_cells() {
    local s
    read -ra s <<<"$(bench_stats "$1")"
    awk -v wm="${s[0]}" -v w0="${s[1]}" -v w1="${s[2]}" -v cm="${s[3]}" -v c0="${s[4]}" -v c1="${s[5]}" \
        -v rm="${s[6]}" -v r0="${s[7]}" -v r1="${s[8]}" \
        'BEGIN { printf "%.2f (%.2f–%.2f) | %.2f (%.2f–%.2f) | %.1f (%.1f–%.1f)\n",
                 wm, w0, w1, cm, c0, c1, rm, r0, r1 }'
}

# bench_rate RESULTS BYTES: prints BYTES in MiB per second of the median wall time of RESULTS.
bench_rate() {
    awk -v b="$2" -v w="$(bench_median_of "$1" wall)" 'BEGIN { printf "%.0f", b / 1048576 / w }'
}

# bench_combine OUT RESULTS...: for steps run one after the other, appends to OUT one line per run (line N
# of each RESULTS) with wall, user and sys summed and the largest peak RSS: the pipeline as one command.
bench_combine() {
    local out=$1
    shift
    paste -d' ' "$@" | awk '{ w = u = s = m = 0
        for (i = 1; i <= NF; i += 4) { w += $i; u += $(i + 1); s += $(i + 2); if ($(i + 3) > m) m = $(i + 3) }
        printf "%.2f %.2f %.2f %d\n", w, u, s, m }' >>"$out"
}

# bench_median_file FILE: the median of the numbers in FILE, one a line.
bench_median_file() {
    sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# bench_registry_start DIR: starts Debian's docker-registry (CNCF distribution) on a free 127.0.0.1 port,
# plain HTTP, storage in DIR/storage, and waits until /v2/ answers. Writes DIR/config.yml, DIR/port and
# DIR/pid; the access log (one line a request: method, path, status) goes to DIR/access.log, the rest to
# DIR/registry.log. Call it in the script's own shell (not in $(...)) so the registry is its child, and
# pair it with bench_registry_stop DIR, also from an EXIT trap.
bench_registry_start() {
    local dir=$1 port pid attempt i
    mkdir -p "$dir/storage"
    for attempt in 1 2 3; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        cat >"$dir/config.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: $dir/storage}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
YML
        /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/access.log" 2>"$dir/registry.log" &
        pid=$!
        echo "$pid" >"$dir/pid"
        echo "$port" >"$dir/port"
        for ((i = 0; i < 100; i++)); do
            if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then return 0; fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        bench_log "registry on 127.0.0.1:$port did not come up (attempt $attempt):"
        tail -n 5 "$dir/registry.log" >&2
        bench_registry_stop "$dir"
    done
    bench_die "could not start docker-registry"
}

# bench_registry_stop DIR: stops the registry that bench_registry_start DIR started, if it still runs.
bench_registry_stop() {
    local pid
    [[ -f $1/pid ]] || return 0
    pid=$(<"$1/pid")
    rm -f -- "$1/pid"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# bench_blob_puts LOG FROM_LINE: counts the completed blob uploads (PUT .../blobs/uploads/...?digest= with
# 201) in a registry access log after line FROM_LINE.
bench_blob_puts() {
    tail -n +"$(($2 + 1))" "$1" | grep -c '"PUT /v2/[^ ]*/blobs/uploads/[^ ]*digest=[^ ]* HTTP/[0-9.]*" 201 ' || true
}

# bench_patches LOG FROM_LINE: counts the PATCH requests (upload chunks) after line FROM_LINE.
bench_patches() {
    tail -n +"$(($2 + 1))" "$1" | grep -c '"PATCH /v2/' || true
}
