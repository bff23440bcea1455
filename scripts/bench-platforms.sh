#!/usr/bin/env bash
# Benchmarks issue 10's promise: four platforms over one shared ~300 MiB context (scripts/lib-bench.sh) in
# one push cost about one single-platform push, the context layer uploaded once. In the same run:
#   one:   `docker-idpb push CONTEXT -t REG/bench/one:N --platform linux/amd64`
#   four:  `docker-idpb push CONTEXT -t REG/bench/four:N --platform linux/amd64,linux/arm64,linux/arm/v7,linux/ppc64le`
#   apart: the same four platforms as four single-platform pushes, one after the other (wall times summed)
# Each measurement gets a fresh registry (Debian's docker-registry on 127.0.0.1) and a fresh $IDPB_HOME, so
# nothing is skipped; the access log counts completed blob uploads.
#
#   scripts/bench-platforms.sh            # builds target/release/docker-idpb first
#   IDPB_BIN=... BENCH_RUNS=3 scripts/bench-platforms.sh
set -euo pipefail

# shellcheck source=scripts/lib-bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-bench.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/idpb-bench}
RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || bench_die "BENCH_RUNS must be a positive integer, not '$RUNS'"
bench_require /usr/bin/time:time /usr/bin/curl:curl /usr/bin/docker-registry:docker-registry
idpb=$(bench_idpb_bin)
context=$(bench_context "$BENCH_DIR")
bench_warm_cache "$context"
work=$(mktemp -d "$BENCH_DIR/platforms.XXXXXX")
cleanup() {
    for d in "$work"/reg-*; do [[ -d $d ]] && bench_registry_stop "$d"; done
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FOUR=linux/amd64,linux/arm64,linux/arm/v7,linux/ppc64le
: >"$work/one.txt"
: >"$work/four.txt"
: >"$work/apart.txt"
: >"$work/uploads.txt"
for ((i = 1; i <= RUNS; i++)); do
    for kind in one four; do
        bench_registry_start "$work/reg-$kind$i"
        r=127.0.0.1:$(<"$work/reg-$kind$i/port")
        platforms=$([[ $kind == one ]] && echo linux/amd64 || echo "$FOUR")
        bench_time "$work/$kind.txt" "$work/$kind-$i.log" env IDPB_HOME="$work/home-$kind$i" \
            "$idpb" push "$context" -t "$r/bench/$kind:$i" --platform "$platforms" -q
        echo "$kind $(bench_blob_puts "$work/reg-$kind$i/access.log" 0)" >>"$work/uploads.txt"
        bench_registry_stop "$work/reg-$kind$i"
    done
    bench_registry_start "$work/reg-apart$i"
    r=127.0.0.1:$(<"$work/reg-apart$i/port")
    : >"$work/apart-$i.txt"
    for p in ${FOUR//,/ }; do
        bench_time "$work/apart-$i.txt" "$work/apart-$i-${p//\//-}.log" env IDPB_HOME="$work/home-apart$i-${p//\//-}" \
            "$idpb" push "$context" -t "$r/bench/apart-${p//\//-}:$i" --platform "$p" -q
    done
    awk '{ w += $1; u += $2; s += $3; if ($4 > m) m = $4 } END { print w, u, s, m }' "$work/apart-$i.txt" >>"$work/apart.txt"
    echo "apart $(bench_blob_puts "$work/reg-apart$i/access.log" 0)" >>"$work/uploads.txt"
    bench_registry_stop "$work/reg-apart$i"
done

{
    echo "### Four platforms over one shared 300 MiB context (scratch base)"
    echo
    echo "| push | wall s | CPU s (user+sys) | peak RSS MiB | blob uploads |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for kind in one four apart; do
        read -ra s <<<"$(bench_stats "$work/$kind.txt")"
        uploads=$(grep "^$kind " "$work/uploads.txt" | tail -n 1 | cut -d' ' -f2)
        case $kind in
        one) label="one platform (linux/amd64)" ;;
        four) label="four platforms in one push (index)" ;;
        *) label="the same four platforms, four pushes one after the other" ;;
        esac
        awk -v l="$label" -v wm="${s[0]}" -v w0="${s[1]}" -v w1="${s[2]}" -v cm="${s[3]}" -v rm="${s[6]}" -v u="$uploads" \
            'BEGIN { printf "| %s | %.2f (%.2f–%.2f) | %.2f | %.1f | %s |\n", l, wm, w0, w1, cm, rm, u }'
    done
} | tee "$BENCH_DIR/bench-platforms.md"
