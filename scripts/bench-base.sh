#!/usr/bin/env bash
# Benchmarks issue 9's two promises against peers in the same run, and prints markdown tables for the README:
#
#  A. Re-push after a one-file app change. The ~300 MiB benchmark context (scripts/lib-bench.sh) is split
#     with `--layer logs/ --layer data/` into ~290 MiB of "dependency" layers and a small app layer (src/,
#     12 MiB of text). After a cold push, one file of src/ changes and the image is pushed again:
#       docker-idpb: `push CONTEXT --layer logs/ --layer data/ -t REG/bench/idpb:N` (same $IDPB_HOME: the
#         unchanged layers are recognised by their stat walk and found in the registry);
#       crane (go-containerregistry v0.20.2, ../shared/peers/crane): `tar -cf app.tar src` then
#         `crane append -b REG/bench/crane:deps -f app.tar -t REG/bench/crane:N` on a base image holding the
#         same dependency layers (made once, untimed).
#     Reported: wall time and the bytes each one uploaded (from the registry's access log / our JSON).
#  B. Cross-registry base copy. The benchmark context is pushed as an image to registry A; then
#       docker-idpb: `push SMALL_CTX --base A/bench/base:1 -t B/bench/app:N` (fresh registry B and fresh
#         $IDPB_HOME each run: every base blob is streamed A -> B, verified, plus our tiny layer);
#       skopeo: `skopeo copy docker://A/bench/base:1 docker://B/bench/skopeo:N` (fresh registry B).
#       and again with a context holding a directory (app/hello.txt), whose first build on a base also reads
#       the base layers' tar headers once (to follow the base's directory symlinks), in parallel with the copy.
#     Reported: wall, CPU and peak RSS.
#
#   scripts/bench-base.sh                     # builds target/release/docker-idpb first
#   IDPB_BIN=... BENCH_RUNS=3 scripts/bench-base.sh
#
# Only registries it starts on 127.0.0.1 are contacted. Tables go to stdout and $BENCH_DIR/bench-base.md.
set -euo pipefail

# shellcheck source=scripts/lib-bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-bench.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/idpb-bench}
RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || bench_die "BENCH_RUNS must be a positive integer, not '$RUNS'"
CRANE=${CRANE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/peers/crane}
[[ -x $CRANE ]] || bench_die "crane not found at $CRANE (set CRANE)"

bench_require /usr/bin/time:time /usr/bin/curl:curl /usr/bin/jq:jq /usr/bin/skopeo:skopeo \
    /usr/bin/docker-registry:docker-registry
idpb=$(bench_idpb_bin)
context=$(bench_context "$BENCH_DIR")
bench_warm_cache "$context"

work=$(mktemp -d "$BENCH_DIR/base.XXXXXX")
cleanup() {
    for d in "$work"/reg-*; do [[ -d $d ]] && bench_registry_stop "$d"; done
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

idpb_json() { grep '^{' "$1" | tail -n 1; }
# uploaded_bytes LOG FROM: bytes of blob PATCH/PUT bodies are not in the access log; count completed blob
# uploads instead and let the caller add sizes from the JSON report.
blob_puts_since() { bench_blob_puts "$1" "$2"; }

# A private copy of the context whose src/ we may touch.
ctx=$work/ctx
cp -a "$context" "$ctx"
victim=$(find "$ctx/src" -type f | sort | awk "NR == 1")

# ---------------------------------------------------------------------------------------------------------
# A. Re-push after a one-file change.
bench_registry_start "$work/reg-a"
porta=$(<"$work/reg-a/port")
ra=127.0.0.1:$porta
home=$work/idpb-home
: >"$work/a-idpb.txt"
: >"$work/a-crane.txt"
: >"$work/a-bytes.txt"

IDPB_HOME=$home "$idpb" push "$ctx" --layer logs/ --layer data/ -t "$ra/bench/idpb:0" -q --format json >"$work/a-cold.json"
bench_log "cold split push: $(jq -c '[.layers[].size]' "$work/a-cold.json")"

# crane's base: the same dependency directories as one image (made once, untimed).
tar -C "$ctx" -cf "$work/deps.tar" logs data
"$CRANE" append --insecure -f "$work/deps.tar" -t "$ra/bench/crane:deps" >/dev/null 2>"$work/crane-base.log"

for ((i = 1; i <= RUNS; i++)); do
    printf 'change %d\n' "$i" >>"$victim"
    from=$(wc -l <"$work/reg-a/access.log")
    bench_time "$work/a-idpb.txt" "$work/a-idpb-$i.log" env IDPB_HOME="$home" \
        "$idpb" push "$ctx" --layer logs/ --layer data/ -t "$ra/bench/idpb:$i" -q --format json
    bytes=$(idpb_json "$work/a-idpb-$i.log" | jq '.sent.bytes_uploaded')
    app=$(idpb_json "$work/a-idpb-$i.log" | jq '.layers[-1].size')
    echo "idpb $bytes $app $(blob_puts_since "$work/reg-a/access.log" "$from")" >>"$work/a-bytes.txt"
    from=$(wc -l <"$work/reg-a/access.log")
    bench_time "$work/a-crane.txt" "$work/a-crane-$i.log" sh -c \
        "tar -C '$ctx' -cf '$work/app.tar' src && '$CRANE' append --insecure -b '$ra/bench/crane:deps' -f '$work/app.tar' -t '$ra/bench/crane:$i'"
    crane_layer=$("$CRANE" manifest --insecure "$ra/bench/crane:$i" | jq '.layers[-1].size')
    echo "crane - $crane_layer $(blob_puts_since "$work/reg-a/access.log" "$from")" >>"$work/a-bytes.txt"
done

# ---------------------------------------------------------------------------------------------------------
# B. Cross-registry base copy.
"$idpb" push "$context" --layer logs/ --layer data/ -t "$ra/bench/base:1" -q --no-cache >/dev/null
small=$work/small
mkdir -p "$small"
echo "hello from a tiny app" >"$small/hello.txt"
withdir=$work/withdir
mkdir -p "$withdir/app"
echo "hello from a tiny app" >"$withdir/app/hello.txt"
: >"$work/b-idpb.txt"
: >"$work/b-idpbdir.txt"
: >"$work/b-skopeo.txt"
for ((i = 1; i <= RUNS; i++)); do
    bench_registry_start "$work/reg-b$i"
    rb=127.0.0.1:$(<"$work/reg-b$i/port")
    bench_time "$work/b-idpb.txt" "$work/b-idpb-$i.log" env IDPB_HOME="$work/home-b$i" \
        "$idpb" push "$small" --base "$ra/bench/base:1" -t "$rb/bench/app:$i" -q --format json
    bench_time "$work/b-idpbdir.txt" "$work/b-idpbdir-$i.log" env IDPB_HOME="$work/home-d$i" \
        "$idpb" push "$withdir" --base "$ra/bench/base:1" -t "$rb/bench/appdir:$i" -q --format json
    bench_time "$work/b-skopeo.txt" "$work/b-skopeo-$i.log" skopeo copy --src-tls-verify=false \
        --dest-tls-verify=false "docker://$ra/bench/base:1" "docker://$rb/bench/skopeo:$i"
    bench_registry_stop "$work/reg-b$i"
done
base_bytes=$("$CRANE" manifest --insecure "$ra/bench/base:1" | jq '[.layers[].size] | add')

{
    echo "### Re-push after a one-file app change (300 MiB context, --layer logs/ --layer data/)"
    echo
    echo "| tool | wall s | CPU s (user+sys) | peak RSS MiB | app layer MiB | uploaded MiB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for tool in idpb crane; do
        read -ra s <<<"$(bench_stats "$work/a-$tool.txt")"
        if [[ $tool == idpb ]]; then
            read -r _ up app _ < <(grep '^idpb' "$work/a-bytes.txt" | tail -n 1)
            label="docker-idpb push (cached layers)"
        else
            read -r _ _ app _ < <(grep '^crane' "$work/a-bytes.txt" | tail -n 1)
            up=$app
            label="tar + crane append"
        fi
        awk -v l="$label" -v wm="${s[0]}" -v w0="${s[1]}" -v w1="${s[2]}" -v cm="${s[3]}" -v rm="${s[6]}" \
            -v app="$app" -v up="$up" \
            'BEGIN { printf "| %s | %.2f (%.2f–%.2f) | %.2f | %.1f | %.2f | %.2f |\n", l, wm, w0, w1, cm, rm,
                     app / 1048576, up / 1048576 }'
    done
    echo
    echo "### Cross-registry base copy ($(bench_mib "$base_bytes") MiB of base layers, registry A -> a fresh registry B)"
    echo
    echo "| tool | wall s | CPU s (user+sys) | peak RSS MiB | MiB/s |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for tool in idpb idpbdir skopeo; do
        read -ra s <<<"$(bench_stats "$work/b-$tool.txt")"
        case $tool in
        idpb) label="docker-idpb push --base (a file; cold cache)" ;;
        idpbdir) label="docker-idpb push --base (a directory: + one-time header scan)" ;;
        *) label="skopeo copy" ;;
        esac
        awk -v l="$label" -v wm="${s[0]}" -v w0="${s[1]}" -v w1="${s[2]}" -v cm="${s[3]}" -v rm="${s[6]}" \
            -v r0="${s[7]}" -v r1="${s[8]}" -v b="$base_bytes" \
            'BEGIN { printf "| %s | %.2f (%.2f–%.2f) | %.2f | %.1f (%.1f–%.1f) | %.0f |\n", l, wm, w0, w1, cm, rm,
                     r0, r1, b / 1048576 / wm }'
    done
} | tee "$BENCH_DIR/bench-base.md"
