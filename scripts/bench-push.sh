#!/usr/bin/env bash
# Benchmarks `docker-idpb push` against the peer pipeline umoci + skopeo on the same ~300 MiB context as
# scripts/bench-build.sh, pushed to a local plain-HTTP registry, and prints markdown tables (wall time, CPU
# time, peak RSS) ready for the README.
#
#   scripts/bench-push.sh            # builds target/release/docker-idpb first
#   IDPB_BIN=/path/to/docker-idpb scripts/bench-push.sh
#
# Environment: BENCH_DIR (default /tmp/idpb-bench; the generated context is cached there), BENCH_RUNS
# (default 3), IDPB_BIN. Installs the Debian packages `time`, `curl`, `umoci`, `skopeo` and
# `docker-registry` when missing; otherwise talks only to registries it starts on 127.0.0.1. Progress goes
# to stderr, the tables to stdout (and to $BENCH_DIR/bench-push.md).
#
# Every cold push goes to a registry of its own (Debian's docker-registry, i.e. CNCF distribution, plain
# HTTP on a free 127.0.0.1 port, storage in a temp dir), started before and stopped after, so nothing is
# there to skip or mount; docker-idpb also gets a fresh $IDPB_HOME (its layer cache). The registry's access
# log is checked: a cold push must complete the layer upload, a re-push must upload no blob. Measured:
#   docker-idpb: `docker-idpb push CONTEXT -t 127.0.0.1:PORT/bench/idpb:N -q --format json`, which builds
#     and uploads in one stream; with --chunk-size 1MiB, 8MiB (the default, no flag) and 32MiB
#   peer: step 1 `umoci init` + `umoci new` + `umoci unpack --rootless` + `cp -a CONTEXT/. rootfs/` +
#     `umoci repack` (one timed command), step 2 `skopeo copy --dest-tls-verify=false oci:LAYOUT:bench
#     docker://127.0.0.1:PORT/bench/peer:N`; the pipeline's wall and CPU are the two steps' sums, its peak
#     RSS the larger of the two
#   re-push of the unchanged context, to the registry of the cold push: docker-idpb runs the same push again
#     with the same $IDPB_HOME (the cache recognises the context and the registry has the blobs, so the
#     context is not read); the peer runs the same skopeo copy of the same layout again
# Runs are interleaved, the page cache is warm and dirty pages are flushed before each timed command.
set -euo pipefail

# shellcheck source=scripts/lib-bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-bench.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/idpb-bench}
RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || bench_die "BENCH_RUNS must be a positive integer, not '$RUNS'"

bench_require /usr/bin/time:time /usr/bin/curl:curl /usr/bin/jq:jq /usr/bin/umoci:umoci /usr/bin/skopeo:skopeo \
    /usr/bin/docker-registry:docker-registry
idpb=$(bench_idpb_bin)
context=$(bench_context "$BENCH_DIR")
read -r ctx_files ctx_bytes < <(bench_context_summary "$context")
bench_log "context: $context ($ctx_files files, $(bench_mib "$ctx_bytes") MiB)"
bench_warm_cache "$context"

work=$(mktemp -d "$BENCH_DIR/push.XXXXXX")
reg=$work/registry
cleanup() {
    bench_registry_stop "$reg"
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# idpb_json LOG: the JSON report of a docker-idpb run (its last line that is a JSON object).
idpb_json() { grep '^{' "$1" | tail -n 1; }

# check_cold NAME LOG_FROM LAYER_DIGEST: dies unless the registry completed an upload of the layer after
# line LOG_FROM of its access log (a cold push that really uploaded); records PATCH count and blob uploads.
check_cold() {
    local name=$1 from=$2 digest=$3
    tail -n +"$((from + 1))" "$reg/access.log" |
        grep -Eq "\"PUT /v2/[^ ]*/blobs/uploads/[^ ]*digest=sha256(:|%3[Aa])${digest#sha256:}[^ ]* HTTP/[0-9.]*\" 201 " ||
        bench_die "$name: the registry saw no completed upload of the layer $digest"
    bench_patches "$reg/access.log" "$from" >>"$work/$name.patches"
    bench_blob_puts "$reg/access.log" "$from" >>"$work/$name.puts"
}

# check_repush NAME LOG_FROM: records the blob uploads of a re-push (warns unless none).
check_repush() {
    local n
    n=$(bench_blob_puts "$reg/access.log" "$2")
    echo "$n" >>"$work/$1.puts"
    ((n == 0)) || bench_log "warning: $1 uploaded $n blobs again"
}

# run_idpb NAME CHUNK_FLAG [repush]: a cold docker-idpb push to a fresh registry (and optionally the
# re-push), recording times, layer size, PATCH and upload counts.
run_idpb() {
    local name=$1 chunk=$2 repush=${3:-} home port ref from json digest args
    bench_registry_start "$reg"
    port=$(<"$reg/port")
    home=$work/idpb-home
    rm -rf -- "$home"
    mkdir -p "$home"
    ref=127.0.0.1:$port/bench/idpb:$run
    args=(push "$context" -t "$ref" -q --format json)
    [[ -n $chunk ]] && args+=(--chunk-size "$chunk")

    from=$(wc -l <"$reg/access.log")
    bench_time "$work/$name.times" "$work/$name.log" env IDPB_HOME="$home" "$idpb" "${args[@]}"
    json=$(idpb_json "$work/$name.log")
    digest=$(jq -r ".layers[-1].digest" <<<"$json")
    jq -r ".layers[-1].size" <<<"$json" >>"$work/$name.size"
    [[ $(jq -r --arg d "$digest" '.sent.blobs_uploaded | index($d) != null' <<<"$json") == true ]] ||
        bench_die "$name: docker-idpb did not report uploading the layer: $json"
    check_cold "$name" "$from" "$digest"

    if [[ $repush == repush ]]; then
        from=$(wc -l <"$reg/access.log")
        bench_time "$work/idpb-repush.times" "$work/idpb-repush.log" env IDPB_HOME="$home" "$idpb" "${args[@]}"
        json=$(idpb_json "$work/idpb-repush.log")
        jq -r .sent.bytes_uploaded <<<"$json" >>"$work/idpb-repush.bytes"
        [[ $(jq -r --arg d "$digest" '.sent.blobs_skipped | index($d) != null' <<<"$json") == true ]] ||
            bench_log "warning: the docker-idpb re-push did not skip the layer: $json"
        check_repush idpb-repush "$from"
    fi
    bench_registry_stop "$reg"
    rm -rf -- "$reg" "$home"
}

# The umoci step of the peer pipeline, as one command for /usr/bin/time: LAYOUT BUNDLE CONTEXT.
# shellcheck disable=SC2016  # expanded by the inner shell
umoci_step=(bash -c 'set -e
    umoci init --layout "$1"
    umoci new --image "$1:bench"
    umoci unpack --rootless --image "$1:bench" "$2"
    cp -a "$3/." "$2/rootfs/"
    umoci repack --image "$1:bench" "$2"' umoci-step)

# run_peer: umoci, then skopeo copy to a fresh registry, then the skopeo re-push.
run_peer() {
    local layout=$work/peer-layout bundle=$work/peer-bundle port dest from digest
    rm -rf -- "$layout" "$bundle"
    bench_registry_start "$reg"
    port=$(<"$reg/port")
    dest=docker://127.0.0.1:$port/bench/peer:$run

    bench_time "$work/peer-umoci.times" "$work/peer-umoci.log" "${umoci_step[@]}" "$layout" "$bundle" "$context"
    bench_largest_blob "$layout" >>"$work/peer.size"
    digest=sha256:$(find "$layout/blobs/sha256" -type f -printf '%s %f\n' | sort -n | tail -n 1 | cut -d' ' -f2)
    from=$(wc -l <"$reg/access.log")
    bench_time "$work/peer-skopeo.times" "$work/peer-skopeo.log" \
        skopeo copy --dest-tls-verify=false "oci:$layout:bench" "$dest"
    check_cold peer "$from" "$digest"

    from=$(wc -l <"$reg/access.log")
    bench_time "$work/peer-repush.times" "$work/peer-repush.log" \
        skopeo copy --dest-tls-verify=false "oci:$layout:bench" "$dest"
    check_repush peer-repush "$from"

    bench_registry_stop "$reg"
    rm -rf -- "$reg" "$layout" "$bundle"
}

for ((run = 1; run <= RUNS; run++)); do
    bench_log "run $run/$RUNS"
    run_idpb idpb-8m '' repush
    run_peer
    run_idpb idpb-1m 1MiB
    run_idpb idpb-32m 32MiB
done
# The pipeline as a whole: per run, the steps' wall and CPU summed, the larger peak RSS.
bench_combine "$work/peer.times" "$work/peer-umoci.times" "$work/peer-skopeo.times"

# same_value NAME SUFFIX: the value recorded in $work/NAME.SUFFIX (warns when it changed between runs).
same_value() {
    (($(sort -u "$work/$1.$2" | wc -l) == 1)) || bench_log "warning: $1 $2 varied between runs"
    tail -n 1 "$work/$1.$2"
}

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
idpb_rev=$(git -C "$BENCH_REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
umoci_version=$(umoci --version | awk '{ print $3 }')
skopeo_version=$(skopeo --version | awk '{ print $3 }')
registry_version=$(docker-registry --version | awk '{ print $3 }')
idpb_layer=$(same_value idpb-8m size)
peer_layer=$(same_value peer size)
idpb_wall=$(bench_median_of "$work/idpb-8m.times" wall)
idpb_rss=$(bench_median_of "$work/idpb-8m.times" rss)
idpb_rss_max=$(bench_stats "$work/idpb-8m.times" | awk '{ print $9 }')
peer_wall=$(bench_median_of "$work/peer.times" wall)
repush_wall=$(bench_median_of "$work/idpb-repush.times" wall)
repush_max=$(bench_stats "$work/idpb-repush.times" | awk '{ print $3 }')
for c in 1m 32m; do
    [[ $(same_value "idpb-$c" size) == "$idpb_layer" ]] || bench_log "warning: idpb-$c layer size differs"
done

{
    printf 'Push of a %s MiB context (%s files: %s) as a gzip'"'"'d single-layer image to a local plain-HTTP\n' \
        "$(bench_mib "$ctx_bytes")" "$ctx_files" "$BENCH_CONTEXT_DESC"
    printf 'registry (docker-registry %s on 127.0.0.1, a fresh one for each cold push). Median (min–max) of %s\n' \
        "$registry_version" "$RUNS"
    printf 'runs, warm page cache; %s, %s cores; docker-idpb %s, umoci %s, skopeo %s.\n\n' \
        "$cpu_model" "$(nproc)" "$idpb_rev" "$umoci_version" "$skopeo_version"

    echo '### Cold push'
    echo
    echo "| tool | wall s | CPU s (user+sys) | peak RSS MiB | layer MiB | context MiB/s |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    printf '| docker-idpb push (build and upload in one stream) | %s | %s | %s |\n' \
        "$(bench_cells "$work/idpb-8m.times")" "$(bench_mib "$idpb_layer")" "$(bench_rate "$work/idpb-8m.times" "$ctx_bytes")"
    printf '| umoci + skopeo, total (RSS: the larger step) | %s | %s | %s |\n' \
        "$(bench_cells "$work/peer.times")" "$(bench_mib "$peer_layer")" "$(bench_rate "$work/peer.times" "$ctx_bytes")"
    printf '| ↳ umoci init + new + unpack + cp -a + repack | %s | %s | %s |\n' \
        "$(bench_cells "$work/peer-umoci.times")" "$(bench_mib "$peer_layer")" "$(bench_rate "$work/peer-umoci.times" "$ctx_bytes")"
    printf '| ↳ skopeo copy oci: → registry | %s | %s | – |\n' \
        "$(bench_cells "$work/peer-skopeo.times")" "$(bench_mib "$peer_layer")"
    echo

    echo '### Re-push of the unchanged context'
    echo
    echo "| tool | wall s | CPU s (user+sys) | peak RSS MiB | blobs uploaded |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    # shellcheck disable=SC2016  # a literal $IDPB_HOME in the label
    printf '| docker-idpb push, same command and $IDPB_HOME (layer cache) | %s | %s |\n' \
        "$(bench_cells "$work/idpb-repush.times")" "$(bench_median_file "$work/idpb-repush.puts")"
    printf '| skopeo copy of the same layout again | %s | %s |\n' \
        "$(bench_cells "$work/peer-repush.times")" "$(bench_median_file "$work/peer-repush.puts")"
    echo

    echo '### docker-idpb cold push: chunk size'
    echo
    echo "| --chunk-size | wall s | CPU s (user+sys) | peak RSS MiB | context MiB/s | PATCH requests |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for c in 1m 8m 32m; do
        case $c in
        1m) label='1 MiB' ;;
        8m) label='8 MiB (default)' ;;
        32m) label='32 MiB' ;;
        esac
        printf '| %s | %s | %s | %s |\n' "$label" "$(bench_cells "$work/idpb-$c.times")" \
            "$(bench_rate "$work/idpb-$c.times" "$ctx_bytes")" "$(bench_median_file "$work/idpb-$c.patches")"
    done
    echo
    awk -v w="$idpb_wall" -v p="$peer_wall" -v r="$idpb_rss" -v rx="$idpb_rss_max" -v rw="$repush_wall" \
        -v rwx="$repush_max" 'BEGIN {
        printf "docker-idpb cold push %.2f s: %.1fx %s than umoci + skopeo (%.2f s). ", w, (w < p ? p / w : w / p), (w < p ? "faster" : "slower"), p
        printf "Peak RSS %.1f MiB (%.1f MB; largest run %.1f MB): %s 64 MB. ", r, r * 1.048576, rx * 1.048576, (rx * 1.048576 < 64 ? "under" : "NOT under")
        printf "Unchanged re-push %.2f s (slowest run %.2f s): %s a second.\n", rw, rwx, (rwx < 1 ? "under" : "NOT under") }'
} | tee "$BENCH_DIR/bench-push.md"
