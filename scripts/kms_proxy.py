#!/usr/bin/env python3
"""A KMS endpoint with added latency: forwards every request to a KMS-compatible server
(moto) after sleeping, so benchmarks can see what a real region's round trip costs.

    python3 scripts/kms_proxy.py --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT2 --latency-ms 10

Counts requests per operation and prints them on SIGTERM/SIGINT."""
import argparse, collections, http.server, signal, sys, threading, time, urllib.request

counts = collections.Counter()
lock = threading.Lock()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the body waits for the
        # client's delayed ACK of the headers and every call costs an extra ~40 ms.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            op = self.headers.get("X-Amz-Target", "unknown").rsplit(".", 1)[-1]
            with lock:
                counts[op] += 1
            time.sleep(a.latency_ms / 1000.0)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
            req = urllib.request.Request(a.upstream + self.path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req) as resp:
                    status, data, rh = resp.status, resp.read(), resp.headers
            except urllib.error.HTTPError as e:
                status, data, rh = e.code, e.read(), e.headers
            self.send_response(status)
            for k, v in rh.items():
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    def stop(*_):
        print(dict(counts), file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()

if __name__ == "__main__":
    main()
