#!/usr/bin/python3
"""Hostile registry for docker-idpb's integration tests (`hostile.rs` starts it).

A minimal distribution registry (ping, Basic or Bearer challenges, blob HEAD/GET, chunked uploads,
manifests, catalog and tag lists, a canned one-layer-less image under every name) that misbehaves in one
way chosen with --scenario:

  registry            no misbehaviour: the baseline the others build on
  redirect-manifests  manifest GET/HEAD answer 307 to --redirect-to (another origin) + the same path
  redirect-blob-heads blob HEADs answer 307 to --redirect-to + the same path
  plain-http-location upload Locations are absolute `http://127.0.0.1:PORT/...` URLs (serve it with TLS)
  proxy               an HTTP proxy recorder: answers 502 to every request (absolute URIs), except that a
                      CONNECT opens a tunnel whose plain-HTTP requests are recorded (and answered 502)
  big-manifest        manifest GETs answer a 15 MiB manifest made of `{}` layers
  huge-lists          `_catalog` and `tags/list` answer 32 pages of ~4 MiB each, chained with `Link`
  trickle-ping        `GET /v2/` sends its headers, then one body byte per second, forever
  trickle-manifest    the ping is fine; manifest GETs trickle like trickle-ping
  silent              every connection is accepted, read and never answered
  bad-location        upload POSTs answer 202 with `Location: --location` verbatim
  flaky-ping          the first --failures `GET /v2/` answer 503, then the registry behaves

With --tls-cert/--tls-key the port speaks TLS and plain HTTP at once: the first byte of each connection
decides (0x16 starts a TLS handshake), so a client downgraded to http:// on the same port is still heard
and recorded. Without TLS a handshake gets a plain `400` and the connection is closed, as a plain HTTP
server does (except in the silent scenario, which holds it).

Every request is appended to --log as one JSON line, after its body is read and before it is answered:
{"method", "path" (the request target as sent), "headers" (lowercase name -> value, repeats joined with
", "), "tls", "tunnel" (the CONNECT target a proxied request came through, else ""), "body" (its first
4 KiB as text)}. Run with Debian's /usr/bin/python3 (stdlib only). It
binds a random loopback port, writes it to --port-file once listening and exits when its stdin closes,
so it never outlives the test process that started it.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
BIG_MANIFEST_SIZE = 15 * 1024 * 1024
LIST_PAGES = 32
# Entries of 47-48 bytes (`"p00/platform-team/backend-service-name-000000",`): 87,000 make a page of
# about 4 MiB, and the whole list 2.8 million names, few enough for a line-per-write client to print fast.
LIST_PAGE_ITEMS = 87_000
LIST_STEMS = {
    "repositories": "p%02d/platform-team/backend-service-name-",
    "tags": "t%02d-release-candidate-for-linux-amd64-",
}
LOGGED_BODY = 4096
ROUTE = re.compile(
    r"^/v2/(?P<name>.+?)/(?:manifests/(?P<ref>[^/]+)|blobs/uploads/(?P<upload>[^/]*)|blobs/(?P<digest>[^/]+)"
    r"|(?P<tags>tags/list))$"
)
SCENARIOS = [
    "registry",
    "redirect-manifests",
    "redirect-blob-heads",
    "plain-http-location",
    "proxy",
    "big-manifest",
    "huge-lists",
    "trickle-ping",
    "trickle-manifest",
    "silent",
    "bad-location",
    "flaky-ping",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True, choices=SCENARIOS)
    parser.add_argument("--port-file", required=True, help="where to write the port once listening")
    parser.add_argument("--log", required=True, help="JSON-lines request log")
    parser.add_argument("--tls-cert", help="TLS server certificate (PEM): the port also speaks TLS")
    parser.add_argument("--tls-key", help="TLS server key (PEM)")
    parser.add_argument("--auth", choices=["none", "basic", "bearer"], default="none")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--realm", default="", help="the Bearer challenge's realm, verbatim")
    parser.add_argument("--service", default="svc")
    parser.add_argument("--redirect-to", default="", help="origin of 307 redirects, http://127.0.0.1:PORT")
    parser.add_argument("--location", default="", help="upload Location for bad-location, verbatim")
    parser.add_argument("--failures", type=int, default=2, help="503s before the ping works (flaky-ping)")
    return parser.parse_args()


def json_bytes(value):
    return json.dumps(value, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json_bytes(
    {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}
)
CONFIG_DESCRIPTOR = {"mediaType": CONFIG_TYPE, "digest": sha256(CONFIG), "size": len(CONFIG)}
MANIFEST = json_bytes(
    {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": CONFIG_DESCRIPTOR, "layers": []}
)


def big_manifest():
    """A valid-looking manifest of exactly BIG_MANIFEST_SIZE bytes whose layers are `{}`s."""
    head = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": CONFIG_DESCRIPTOR})[:-1]
    head = (head + ',"layers":[').encode()
    tail = b"{}]}"
    count, rest = divmod(BIG_MANIFEST_SIZE - len(head) - len(tail), 3)
    return head + b"{}," * count + b" " * rest + tail


def list_page(kind, page):
    """Page `page` of a huge list, `"p05/platform-team/backend-service-name-000000",...` for
    repositories, `"t05-release-candidate-for-linux-amd64-000000",...` for tags, without the brackets."""
    stem = LIST_STEMS[kind] % page
    return '"' + stem + ('","' + stem).join("%06d" % i for i in range(LIST_PAGE_ITEMS)) + '"'


def last_of_page(kind, page):
    return LIST_STEMS[kind] % page + "%06d" % (LIST_PAGE_ITEMS - 1)


class State:
    """What the registry holds and counts, shared by the connection threads."""

    def __init__(self, config):
        self.config = config
        self.lock = threading.Lock()
        self.log = open(config.log, "a", encoding="utf-8")
        self.blobs = {CONFIG_DESCRIPTOR["digest"]: CONFIG}
        self.manifests = {}
        self.uploads = {}
        self.pings = 0
        self.big = None
        self.tls = None
        self.port = 0

    def record(self, entry):
        line = json.dumps(entry) + "\n"
        with self.lock:
            self.log.write(line)
            self.log.flush()

    def next_ping(self):
        with self.lock:
            self.pings += 1
            return self.pings

    def big_manifest(self):
        with self.lock:
            if self.big is None:
                self.big = big_manifest()
            return self.big


class Handler(BaseHTTPRequestHandler):
    server_version = "idpb-hostile/1"
    protocol_version = "HTTP/1.1"

    def setup(self):
        # Runs in the connection's thread: a handshake or a peek that stalls blocks only this client.
        self.tls = False
        self.refused = False
        self.broken = False
        self.tunnel = ""
        state = self.server.state
        try:
            first = self.request.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if first == b"\x16" and state.tls is not None:
            self.request = state.tls.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
            self.tls = True
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.refused = self.broken = True
        elif first == b"\x16" or not first:
            self.refused = True
        super().setup()

    def handle(self):
        if not self.refused:
            return super().handle()
        if self.broken:
            return
        if self.server.state.config.scenario == "silent":
            return self.hold()
        try:
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass

    def hold(self):
        """Never answers: reads until the client goes away."""
        try:
            while self.connection.recv(65536):
                pass
        except OSError:
            pass
        self.close_connection = True

    # Every method goes through `dispatch`.
    def do_GET(self):
        self.dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_CONNECT = do_OPTIONS = do_GET

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self):
        state = self.server.state
        body = self.read_body()
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + ", " + value if name in headers else value
        state.record(
            {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "tls": self.tls,
                "tunnel": self.tunnel,
                "body": body[:LOGGED_BODY].decode("utf-8", "replace"),
            }
        )
        scenario = state.config.scenario
        if scenario == "silent":
            return self.hold()
        if scenario == "proxy":
            return self.proxy()
        try:
            self.route(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def proxy(self):
        """A CONNECT opens a tunnel whose plain-HTTP requests are recorded too; everything else gets 502."""
        if self.command == "CONNECT" and not self.tunnel:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            try:
                # Through rfile: its buffer may already hold the start of the tunnel.
                first = self.rfile.peek(1)[:1]
            except OSError:
                first = b""
            # TLS inside the tunnel cannot be read: hang up.
            self.tunnel = self.path
            self.close_connection = first in (b"", b"\x16")
            return
        self.close_connection = True
        self.reply(502, {"errors": [{"code": "BAD_GATEWAY", "message": "proxy recorder"}]})

    def route(self, body):
        state = self.server.state
        config = state.config
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if path in ("/v2", "/v2/"):
            if config.scenario == "flaky-ping" and self.command == "GET" and state.next_ping() <= config.failures:
                return self.reply(503, {"errors": [{"code": "UNAVAILABLE", "message": "warming up"}]})
            if not self.authorized():
                return self.challenge()
            if config.scenario == "trickle-ping":
                return self.trickle("application/json")
            return self.reply(200, {})
        if not path.startswith("/v2/"):
            return self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "not a registry path"}]})
        if not self.authorized():
            return self.challenge()
        if path == "/v2/_catalog":
            if config.scenario == "huge-lists":
                return self.list_page("/v2/_catalog", "repositories", query, {})
            names = sorted({name for name, _ in state.manifests} or {"ns/app"})
            return self.reply(200, {"repositories": names})
        match = ROUTE.match(path)
        if match is None:
            return self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "unknown path"}]})
        name = match.group("name")
        if match.group("tags"):
            if config.scenario == "huge-lists":
                return self.list_page("/v2/%s/tags/list" % name, "tags", query, {"name": name})
            tags = sorted({ref for n, ref in state.manifests if n == name and ":" not in ref} or {"1"})
            return self.reply(200, {"name": name, "tags": tags})
        if match.group("ref") is not None:
            return self.manifest(name, match.group("ref"), body)
        if match.group("upload") is not None:
            return self.upload(name, match.group("upload"), query, body)
        return self.blob(name, match.group("digest"))

    def authorized(self):
        config = self.server.state.config
        header = self.headers.get("Authorization", "")
        if config.auth == "none":
            return True
        if config.auth == "bearer":
            return header == "Bearer hostile-token"
        expected = base64.b64encode(("%s:%s" % (config.user, config.password)).encode()).decode()
        return header == "Basic " + expected

    def challenge(self):
        config = self.server.state.config
        if config.auth == "bearer":
            value = 'Bearer realm="%s",service="%s"' % (config.realm, config.service)
        else:
            value = 'Basic realm="x"'
        error = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        self.reply(401, error, {"WWW-Authenticate": value})

    def redirect(self):
        self.reply(307, None, {"Location": self.server.state.config.redirect_to + self.path})

    def manifest(self, name, ref, body):
        state = self.server.state
        scenario = state.config.scenario
        if self.command == "PUT":
            digest = sha256(body)
            with state.lock:
                state.manifests[(name, ref)] = body
                state.manifests[(name, digest)] = body
            headers = {"Docker-Content-Digest": digest, "Location": "/v2/%s/manifests/%s" % (name, digest)}
            return self.reply(201, None, headers)
        if self.command not in ("GET", "HEAD"):
            return self.reply(405, {"errors": [{"code": "UNSUPPORTED", "message": self.command}]})
        if scenario == "redirect-manifests":
            return self.redirect()
        if scenario == "trickle-manifest" and self.command == "GET":
            return self.trickle(MANIFEST_TYPE)
        data = state.big_manifest() if scenario == "big-manifest" else state.manifests.get((name, ref), MANIFEST)
        headers = {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": sha256(data)}
        self.send_bytes(200, data, headers)

    def blob(self, name, digest):
        state = self.server.state
        if self.command == "HEAD" and state.config.scenario == "redirect-blob-heads":
            return self.redirect()
        if self.command not in ("GET", "HEAD"):
            return self.reply(405, {"errors": [{"code": "UNSUPPORTED", "message": self.command}]})
        data = state.blobs.get(digest)
        if data is None:
            return self.reply(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": digest}]})
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        self.send_bytes(200, data, headers)

    def upload_location(self, name, session):
        state = self.server.state
        path = "/v2/%s/blobs/uploads/%s" % (name, session)
        if state.config.scenario == "plain-http-location":
            return "http://127.0.0.1:%d%s" % (state.port, path)
        return path

    def upload(self, name, session, query, body):
        state = self.server.state
        if self.command == "POST":
            if "mount" in query:
                digest = query["mount"][0]
                if digest in state.blobs:
                    return self.reply(201, None, {"Location": "/v2/%s/blobs/%s" % (name, digest)})
            session = uuid.uuid4().hex
            with state.lock:
                state.uploads[session] = b""
            location = self.upload_location(name, session)
            if state.config.scenario == "bad-location":
                location = state.config.location
            return self.reply(202, None, {"Location": location, "Range": "0-0", "Docker-Upload-UUID": session})
        with state.lock:
            data = state.uploads.get(session)
        if data is None:
            return self.reply(404, {"errors": [{"code": "BLOB_UPLOAD_UNKNOWN", "message": session}]})
        if self.command == "DELETE":
            with state.lock:
                state.uploads.pop(session, None)
            return self.reply(204, None)
        data += body
        with state.lock:
            state.uploads[session] = data
        range_end = "0-%d" % (len(data) - 1) if data else "0-0"
        location = self.upload_location(name, session)
        if self.command in ("PATCH", "GET"):
            status = 202 if self.command == "PATCH" else 204
            return self.reply(status, None, {"Location": location, "Range": range_end, "Docker-Upload-UUID": session})
        if self.command == "PUT":
            digest = query.get("digest", [""])[0]
            with state.lock:
                state.uploads.pop(session, None)
                state.blobs[digest] = data
            headers = {"Location": "/v2/%s/blobs/%s" % (name, digest), "Docker-Content-Digest": digest}
            return self.reply(201, None, headers)
        return self.reply(405, {"errors": [{"code": "UNSUPPORTED", "message": self.command}]})

    def list_page(self, base, kind, query, extra):
        last = query.get("last", [""])[0]
        page = int(last[1:3]) + 1 if re.match(r"^[pt]\d\d", last) else 0
        if page >= LIST_PAGES:
            return self.reply(200, dict(extra, **{kind: []}))
        head = json.dumps(extra)[:-1] + (", " if extra else "") + '"%s":[' % kind
        data = (head + list_page(kind, page) + "]}").encode()
        headers = {"Content-Type": "application/json"}
        if page + 1 < LIST_PAGES:
            headers["Link"] = '<%s?last=%s&n=100>; rel="next"' % (base, last_of_page(kind, page))
        self.send_bytes(200, data, headers)

    def trickle(self, content_type):
        """Headers promising a megabyte, then one byte a second until the client gives up."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(1024 * 1024))
        self.end_headers()
        try:
            self.wfile.write(b"{")
            while True:
                self.wfile.flush()
                time.sleep(1)
                self.wfile.write(b" ")
        except OSError:
            self.close_connection = True

    def reply(self, status, value, headers=None):
        data = b"" if value is None else json_bytes(value)
        headers = dict(headers or {})
        if value is not None:
            headers.setdefault("Content-Type", "application/json")
        self.send_bytes(status, data, headers)

    def send_bytes(self, status, data, headers):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format, *args):
        scheme = "https" if getattr(self, "tls", False) else "http"
        when = self.log_date_time_string()
        sys.stderr.write("%s %s - [%s] %s\n" % (scheme, self.address_string(), when, format % args))
        sys.stderr.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hung up mid-answer is what half of these scenarios are about.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


def exit_when_stdin_closes():
    sys.stdin.buffer.read()
    os._exit(0)


def main():
    config = parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.state = State(config)
    server.state.port = server.server_address[1]
    if config.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        server.state.tls = context

    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    temp = config.port_file + ".tmp"
    with open(temp, "w") as f:
        f.write(str(server.state.port))
    os.replace(temp, config.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
