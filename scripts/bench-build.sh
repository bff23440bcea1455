#!/usr/bin/env bash
# Benchmarks `docker-idpb build` against umoci on the same ~300 MiB context and prints a markdown table
# (wall time, CPU time, peak RSS, layer size) ready for the README.
#
#   scripts/bench-build.sh            # builds target/release/docker-idpb first
#   IDPB_BIN=/path/to/docker-idpb scripts/bench-build.sh
#
# Environment: BENCH_DIR (default /tmp/idpb-bench; the generated context is cached there), BENCH_RUNS
# (default 3), IDPB_BIN. Installs the Debian packages `time` and `umoci` when missing; uses no network
# otherwise. Progress goes to stderr, the table to stdout (and to $BENCH_DIR/bench-build.md).
#
# Rows:
#   docker-idpb, gzip level 1 (the default) and level 6
#   umoci unpack + cp + repack: `umoci unpack --rootless` of an empty image, `cp -a` of the context into
#     its rootfs, `umoci repack`, timed together: the valid umoci pipeline and the main peer
#   umoci insert: `umoci insert --rootless --image L:T CONTEXT /`; umoci 0.4.7 writes that tar without the
#     end-of-archive blocks, so it is shown for reference only
# Setting up the empty umoci image (`umoci init` + `umoci new`) is not timed. Runs are interleaved, the
# page cache is warm and dirty pages are flushed before each run.
set -euo pipefail

# shellcheck source=scripts/lib-bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-bench.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/idpb-bench}
RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || bench_die "BENCH_RUNS must be a positive integer, not '$RUNS'"

bench_require /usr/bin/time:time /usr/bin/umoci:umoci
idpb=$(bench_idpb_bin)
context=$(bench_context "$BENCH_DIR")
read -r ctx_files ctx_bytes < <(bench_context_summary "$context")
bench_log "context: $context ($ctx_files files, $(bench_mib "$ctx_bytes") MiB)"
bench_warm_cache "$context"

work=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
trap 'exit 130' INT TERM

# An empty image for umoci to start from; each umoci run gets a fresh copy.
umoci init --layout "$work/empty" >/dev/null
umoci new --image "$work/empty:bench" >/dev/null

# The valid umoci pipeline, as one command for /usr/bin/time: LAYOUT BUNDLE CONTEXT.
# shellcheck disable=SC2016  # expanded by the inner shell
umoci_repack=(bash -c 'set -e
    umoci unpack --rootless --image "$1:bench" "$2"
    cp -a "$3/." "$2/rootfs/"
    umoci repack --image "$1:bench" "$2"' umoci-repack)

# check_layer LABEL LAYOUT [lenient]: logs whether GNU tar reads the layer to its end, its regular-file
# count and whether it ends with the zero blocks of an end-of-archive marker. Fails on a broken layer or a
# missing file unless "lenient" (the umoci insert row, known to be broken).
check_layer() {
    local label=$1 blob files tail_bytes tar_ok=yes eoa=no
    blob=$(find "$2/blobs/sha256" -type f -printf '%s %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
    files=$(gzip -dc "$blob" | tar -tvf - 2>/dev/null | grep -c '^-') || tar_ok=no
    tail_bytes=$(gzip -dc "$blob" | tail -c 1024 | tr -d '\0' | wc -c)
    if ((tail_bytes == 0)); then eoa=yes; fi
    bench_log "$label layer: tar reads it: $tar_ok, $files regular files, end-of-archive blocks: $eoa"
    [[ ${3:-} == lenient ]] && return 0
    [[ $tar_ok == yes && $files == "$ctx_files" ]] || bench_die "$label layer is broken or incomplete"
}

# run_one NAME KIND ARGS...: one timed run of a row; records the layer size in $work/NAME.size.
run_one() {
    local name=$1 kind=$2 out=$work/out-$1
    shift 2
    rm -rf -- "$out" "$work/bundle"
    case $kind in
    idpb)
        bench_time "$work/$name.times" "$work/$name.log" \
            "$idpb" build "$context" --oci-layout "$out" -t bench:latest -q "$@"
        ;;
    umoci-repack)
        cp -a "$work/empty" "$out"
        bench_time "$work/$name.times" "$work/$name.log" "${umoci_repack[@]}" "$out" "$work/bundle" "$context"
        ;;
    umoci-insert)
        cp -a "$work/empty" "$out"
        bench_time "$work/$name.times" "$work/$name.log" \
            umoci insert --rootless --image "$out:bench" "$context" /
        ;;
    esac
    bench_largest_blob "$out" >>"$work/$name.size"
    if [[ ! -e $work/$name.checked ]]; then
        check_layer "$name" "$out" "$([[ $kind == umoci-insert ]] && echo lenient)"
        touch "$work/$name.checked"
    fi
    rm -rf -- "$out" "$work/bundle"
}

rows=(idpb-1 idpb-6 umoci-repack umoci-insert)
for ((i = 1; i <= RUNS; i++)); do
    bench_log "run $i/$RUNS"
    run_one idpb-1 idpb
    run_one idpb-6 idpb --compression-level 6
    run_one umoci-repack umoci-repack
    run_one umoci-insert umoci-insert
done

# layer_size NAME: the layer size of a row (warns when it changed between runs).
layer_size() {
    (($(sort -u "$work/$1.size" | wc -l) == 1)) || bench_log "warning: $1 layer size varied between runs"
    tail -n 1 "$work/$1.size"
}

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
idpb_rev=$(git -C "$BENCH_REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
umoci_version=$(umoci --version | awk '{ print $3 }')
idpb_wall=$(bench_median_of "$work/idpb-1.times" wall)
idpb_rss=$(bench_median_of "$work/idpb-1.times" rss)
umoci_wall=$(bench_median_of "$work/umoci-repack.times" wall)

{
    printf 'Build of a %s MiB context (%s files: %s) into a gzip'"'"'d single-layer OCI image layout.\n' \
        "$(bench_mib "$ctx_bytes")" "$ctx_files" "$BENCH_CONTEXT_DESC"
    printf 'Median (min–max) of %s runs, warm page cache; %s, %s cores; docker-idpb %s, umoci %s.\n\n' \
        "$RUNS" "$cpu_model" "$(nproc)" "$idpb_rev" "$umoci_version"
    bench_table_header
    for row in "${rows[@]}"; do
        case $row in
        idpb-1) label='docker-idpb (gzip level 1, default)' ;;
        idpb-6) label='docker-idpb --compression-level 6' ;;
        umoci-repack) label='umoci unpack + cp -a + repack' ;;
        umoci-insert) label='umoci insert (tar lacks end-of-archive blocks)' ;;
        esac
        bench_row "$label" "$work/$row.times" "$(layer_size "$row")" "$ctx_bytes"
    done
    echo
    awk -v r="$idpb_rss" -v w="$idpb_wall" -v u="$umoci_wall" 'BEGIN {
        printf "docker-idpb (level 1): peak RSS %.1f MiB, %s 32 MiB; wall %.2f s, %.1fx %s than umoci unpack + cp + repack (%.2f s).\n",
            r, (r < 32 ? "under" : "NOT under"), w, (w < u ? u / w : w / u), (w < u ? "faster" : "slower"), u }'
} | tee "$BENCH_DIR/bench-build.md"
