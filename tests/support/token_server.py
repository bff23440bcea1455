#!/usr/bin/python3
"""Token server for docker-idpb's integration tests (the `HttpsToken` registry mode).

Speaks the Docker token protocol the way the reference registry expects it: `GET /token?service=..&scope=..`
with optional Basic credentials (and the OAuth2 `POST /token` password grant) answers
`{"token", "access_token", "expires_in"}`, where the token is an ES256 JWT whose header carries
`x5c: [signing cert]`; the registry trusts that cert through its `rootcertbundle`. Correct credentials get
every action they ask for, anonymous requests get a token with no access (so the registry answers
`insufficient_scope`), wrong credentials get 401. `aud` is the `service` the client sent, so a client that
forgets it gets a token the registry rejects, as with real token servers.

Run with Debian's /usr/bin/python3 (python3-jwt). It binds a random loopback port, writes it to
--port-file once listening, logs one line per request to stderr, and exits when its stdin closes, so it
never outlives the test process that started it.
"""

import argparse
import base64
import json
import os
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt

TOKEN_LIFETIME = 300


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="TLS server certificate (PEM)")
    parser.add_argument("--key", required=True, help="TLS server key (PEM)")
    parser.add_argument("--sign-cert", required=True, help="certificate put in the JWT x5c header (PEM)")
    parser.add_argument("--sign-key", required=True, help="ES256 key that signs the JWTs (PEM)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--issuer", default="test-issuer")
    parser.add_argument("--port-file", required=True, help="where to write the port once listening")
    return parser.parse_args()


def access_from_scopes(scopes):
    """`repository:ns/x:pull,push` -> {"type", "name", "actions"}; names may contain ':' (ports)."""
    access = []
    for scope in (s for value in scopes for s in value.split(" ") if s):
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind and name:
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
    return access


class Handler(BaseHTTPRequestHandler):
    server_version = "idpb-test-token/1"
    protocol_version = "HTTP/1.1"

    def setup(self):
        # The handshake runs here, in the connection's thread, so a stalled client cannot block accept().
        self.request.do_handshake()
        super().setup()

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != "/token":
            return self.reply(404, {"error": "not_found"})
        self.issue(parse_qs(url.query), self.basic_credentials())

    def do_POST(self):
        if urlsplit(self.path).path != "/token":
            return self.reply(404, {"error": "not_found"})
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != "password":
            return self.reply(400, {"error": "unsupported_grant_type"})
        self.issue(form, (form.get("username", [""])[0], form.get("password", [""])[0]))

    def basic_credentials(self):
        """None when anonymous; ("", "") for anything that is not valid Basic, so it fails the check."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return ("", "")
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except ValueError:
            return ("", "")
        return (user, password)

    def issue(self, query, credentials):
        config = self.server.config
        if credentials is None:
            subject, access = "", []
        elif credentials == (config.user, config.password):
            subject, access = config.user, access_from_scopes(query.get("scope", []))
        else:
            self.log_message("rejected credentials for user %r", credentials[0])
            return self.reply(401, {"error": "invalid credentials"}, {"WWW-Authenticate": 'Basic realm="token"'})
        now = int(time.time())
        claims = {
            "iss": config.issuer,
            "aud": query.get("service", [""])[0],
            "sub": subject,
            "iat": now,
            "nbf": now - 1,
            "exp": now + TOKEN_LIFETIME,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self.server.sign_key, algorithm="ES256", headers={"x5c": [self.server.x5c]})
        self.log_message("granted sub=%r aud=%r access=%s", subject, claims["aud"], json.dumps(access))
        self.reply(200, {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME})

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write("%s - [%s] %s\n" % (self.address_string(), self.log_date_time_string(), format % args))
        sys.stderr.flush()


def exit_when_stdin_closes():
    sys.stdin.buffer.read()
    os._exit(0)


def main():
    config = parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.config = config
    with open(config.sign_key, "rb") as f:
        server.sign_key = f.read()
    with open(config.sign_cert) as f:
        server.x5c = base64.b64encode(ssl.PEM_cert_to_DER_cert(f.read())).decode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config.cert, config.key)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    temp = config.port_file + ".tmp"
    with open(temp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(temp, config.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
