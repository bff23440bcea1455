# docker-idpb: `make demo` and `make test` are the two commands a fresh machine needs.
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/docker-idpb
APT_PACKAGES := docker-registry skopeo umoci nginx apache2-utils python3-jwt openssl curl
# A tool per package, to decide whether apt must run at all.
APT_TOOLS := /usr/bin/docker-registry /usr/bin/skopeo /usr/bin/umoci /usr/sbin/nginx /usr/bin/htpasswd /usr/bin/openssl /usr/bin/curl

.PHONY: all build release test unit lint fmt deps demo bench clean

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
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

test: deps lint
	$(CARGO) test --all-targets -- --test-threads=2

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

# Starts a registry on loopback, pushes examples/hello, pulls it back with skopeo, stops the registry.
demo: deps build
	scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf dist
