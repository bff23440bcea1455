#!/usr/bin/env bash
# `make demo`: start Debian's docker-registry on loopback, push examples/hello with docker-idpb, pull it
# back with skopeo (a client we did not write) and list its files, then stop the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${IDPB_BIN:-target/release/docker-idpb}
PUSH=("$BIN" push)
if [ "${DEMO_PLUGIN:-1}" = 1 ] && command -v docker >/dev/null && docker idpb version >/dev/null 2>&1; then
  PUSH=(docker idpb push)   # the Docker CLI plugin, once `make install` put it in place
fi

work=$(mktemp -d /tmp/idpb-demo.XXXXXX)
cleanup() { [ -n "${reg_pid:-}" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/config.yml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: demo-$RANDOM}
YAML
/usr/bin/docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

ref="127.0.0.1:$port/demo/hello:latest"
echo "==> ${PUSH[*]} examples/hello -t $ref"
"${PUSH[@]}" examples/hello -t "$ref" --cmd /hello.sh
echo "==> skopeo copy docker://$ref oci:$work/pulled:latest"
skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/pulled:latest"
echo "==> files in the pulled image (NOTES.md is excluded by examples/hello/.dockerignore):"
manifest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' "$work/pulled/index.json")
layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"].split(":")[1])' "$work/pulled/blobs/sha256/$manifest")
tar tvzf "$work/pulled/blobs/sha256/$layer"
echo "==> config:"
skopeo inspect --config --tls-verify=false "docker://$ref" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["config"]))'
echo "demo ok: pushed and pulled back $ref"
