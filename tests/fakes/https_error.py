#!/usr/bin/python3
"""An HTTPS server that answers every request with one fixed error, as a
proxy in front of a CA that is down does (nginx's 502 page), or a CA's own
server error: `https_error.py PORT CERT KEY CODE CONTENT_TYPE BODY`.
Binds 127.0.0.1; prints "ready" once it listens."""
import http.server
import ssl
import sys

port, cert, key, code, ctype, body = sys.argv[1:7]
body = body.encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.send_response(int(code))
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", int(port)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
