"""The private network's endpoints, run inside the ``private`` namespace.

Every listener binds 0.0.0.0, so only the namespace firewall keeps the cloud
out. Usage: python nsendpoints.py CERT KEY; prints READY when all listen.

- 8080  HTTP, answers "dev endpoint says hello <path>"
- 8081  HTTP, answers "prod endpoint says hello <path>"
- 8443  HTTPS with its own certificate (for secure-gateway), same dev answer
- 2525  SMTP-like line echo: "220 private-smtp ready", then "250 <line>"
- 45000 a high port answering "private high port" (must never be reachable)
"""

from __future__ import annotations

import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def http_handler(label: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{label} endpoint says hello {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class Smtpish(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 private-smtp ready\r\n")
        for _ in range(100):
            line = self.rfile.readline(1024)
            if not line:
                return
            self.wfile.write(b"250 " + line)


class High(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"private high port\n")


class Tcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    servers: list[socketserver.BaseServer] = [
        ThreadingHTTPServer(("0.0.0.0", 8080), http_handler("dev")),
        ThreadingHTTPServer(("0.0.0.0", 8081), http_handler("prod")),
        Tcp(("0.0.0.0", 2525), Smtpish),
        Tcp(("0.0.0.0", 45000), High),
    ]
    tls = ThreadingHTTPServer(("0.0.0.0", 8443), http_handler("dev"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    servers.append(tls)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
