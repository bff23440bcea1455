# docker-idpb: `make demo` and `make test` are the two commands a fresh machine needs.
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/docker-idpb
APT_PACKAGES := docker-registry skopeo umoci nginx apache2-utils python3-jwt openssl curl time util-linux busybox-static git
# A tool per package, to decide whether apt must run at all.
APT_TOOLS := /usr/bin/docker-registry /usr/bin/skopeo /usr/bin/umoci /usr/sbin/nginx /usr/bin/htpasswd /usr/bin/openssl /usr/bin/curl /usr/bin/time /usr/bin/unshare /bin/busybox /usr/sbin/dockerd /usr/bin/podman /usr/sbin/runc /usr/bin/git

.PHONY: all build release test unit lint fmt deps demo bench clean install uninstall static image

all: build

build:
	$(CARGO) build --release

release: build

# Installs the third-party tools the integration tests use (real registry, skopeo, umoci, nginx) when missing.
deps:
	@missing=0; for t in $(APT_TOOLS); do [ -x $$t ] || missing=1; done; \
	/usr/bin/python3 -c 'import jwt' 2>/dev/null || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "installing test dependencies: $(APT_PACKAGES)"; \
	  SUDO=$$( [ $$(id -u) = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends docker.io podman runc >/dev/null; \
	fi

# Unit and integration tests (the static-binary test needs dist/docker-idpb, hence `static`).
test: deps lint static
	$(CARGO) test --all-targets --no-fail-fast -- --test-threads=2

unit:
	$(CARGO) test --lib

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench: deps build
	scripts/bench-build.sh
	scripts/bench-push.sh

# Installs the plugin, starts a registry on loopback, pushes examples/hello with `docker idpb push`, pulls
# it back with skopeo and lists its files, then stops the registry.
demo: deps install
	scripts/demo.sh

# The Docker CLI plugin and the credential helper (see plugins/README.md).
install: build
	plugins/install.sh $(BIN)

uninstall:
	plugins/install.sh --uninstall

# A fully static x86_64 binary at dist/docker-idpb (glibc 2.34+ resolves hosts without NSS modules).
STATIC_TARGET := x86_64-unknown-linux-gnu
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(STATIC_TARGET)
	mkdir -p dist
	cp target/$(STATIC_TARGET)/release/docker-idpb dist/docker-idpb
	@ls -l dist/docker-idpb | awk '{printf "dist/docker-idpb: %d bytes\n", $$5}'
	@file dist/docker-idpb 2>/dev/null || true

# docker-idpb as a scratch image, built by docker-idpb: into dist/image (OCI layout), or pushed to
# IMAGE=HOST/OWNER/NAME:TAG when given.
IMAGE ?=
image: static
	rm -rf dist/image-root && mkdir -p dist/image-root/etc/ssl/certs
	cp dist/docker-idpb dist/image-root/docker-idpb
	cp /etc/ssl/certs/ca-certificates.crt dist/image-root/etc/ssl/certs/ca-certificates.crt
	if [ -n "$(IMAGE)" ]; then \
	  dist/docker-idpb push dist/image-root -t $(IMAGE) --entrypoint '["/docker-idpb"]' --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt; \
	else \
	  dist/docker-idpb build dist/image-root -t docker-idpb:$$(dist/docker-idpb version | cut -d" " -f2) --oci-layout dist/image \
	    --entrypoint '["/docker-idpb"]' --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt; \
	fi

clean:
	$(CARGO) clean
	rm -rf dist
