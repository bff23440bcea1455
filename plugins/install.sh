#!/usr/bin/env bash
# Installs (or with --uninstall removes) docker-idpb as a Docker CLI plugin and as the
# docker-credential-idpb credential helper.
#
#   plugins/install.sh [--uninstall] [BINARY]
#
# Plugin directory: $PREFIX if set (e.g. /usr/local/lib/docker/cli-plugins for all users), else
# $DOCKER_CONFIG/cli-plugins, else ~/.docker/cli-plugins. The credential helper is a symlink named
# docker-credential-idpb in $BINDIR (default /usr/local/bin for root, ~/.local/bin otherwise), which must
# be on PATH for docker to find it.
set -euo pipefail
uninstall=0
if [ "${1:-}" = "--uninstall" ]; then uninstall=1; shift; fi
binary=${1:-target/release/docker-idpb}
plugin_dir=${PREFIX:-${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins}
if [ "$(id -u)" = 0 ]; then default_bindir=/usr/local/bin; else default_bindir=$HOME/.local/bin; fi
bindir=${BINDIR:-$default_bindir}

if [ "$uninstall" = 1 ]; then
  rm -f "$plugin_dir/docker-idpb" "$bindir/docker-credential-idpb"
  echo "removed $plugin_dir/docker-idpb and $bindir/docker-credential-idpb"
  exit 0
fi
[ -x "$binary" ] || { echo "install.sh: $binary not found; run 'make build' first" >&2; exit 1; }
mkdir -p "$plugin_dir" "$bindir"
install -m 0755 "$binary" "$plugin_dir/docker-idpb"
ln -sfn "$plugin_dir/docker-idpb" "$bindir/docker-credential-idpb"
echo "installed $plugin_dir/docker-idpb (try: docker idpb --help)"
echo "installed $bindir/docker-credential-idpb (credential helper for idpbuilder's Gitea)"
case ":$PATH:" in *":$bindir:"*) ;; *) echo "note: $bindir is not on PATH; add it for docker to find the credential helper" ;; esac
