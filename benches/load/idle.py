#!/usr/bin/env python3
"""What an idle keep-alive connection costs: Sluice (uring, tokio) beside nginx.

    python3 benches/load/idle.py [--count 10000] [--tls] [--no-build]

Each proxy is started fresh for each measure (so that no earlier load left freed
memory for the connections to fill in again), warmed with 50 requests, then given
`--count` keep-alive connections, one no-op request each, and left with them open:

  one after another: each connection's request is answered before the next opens;
      the growth is what idle connections hold;
  all at once: every request is sent before any answer is read (as case (c) of
      run.py); the growth adds what the burst of their requests left in the heap.

The proxy's RSS growth per connection is printed 1 s after the last answer and again
7 s after it (Sluice gives memory freed after a burst back to the system every 5 s:
src/mem.rs). Proxies: one shard / one worker each, in front of an nginx backend; all
on 127.0.0.1; everything stops by itself. Needs nginx (and cargo, without
--no-build; SLUICE_BIN names the binary then).

--tls: the proxies' listeners are HTTPS (TLS 1.3, a P-256 certificate made for the
run with openssl; Sluice's root `tls`, nginx's `listen ... ssl`) and the clients
Python's `ssl`; 2,000 connections by default (each a handshake).
"""

import argparse
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, SLUICE, free_port, nginx_workers, status_kib, wait_port  # noqa: E402 (the harness's helpers)


def rss_kib(pids):
    return sum(status_kib(pid, "VmRSS") for pid in pids)


def answered(s):
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed before the answer")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answered {data.splitlines()[0]!r}")


def request(port, keep, tls=None):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = tls.wrap_socket(s, server_hostname="localhost")
    s.sendall(b"GET /noop HTTP/1.1\r\nHost: x\r\n" + (b"" if keep else b"Connection: close\r\n") + b"\r\n")
    return s


def measure(port, pids, count, one_after_another, tls=None):
    """RSS growth per connection in KiB, 1 s and 7 s after the last answer."""
    for _ in range(50):
        s = request(port, keep=False, tls=tls)
        answered(s)
        s.close()
    time.sleep(0.5)
    before = rss_kib(pids)
    socks = []
    try:
        for _ in range(count):
            socks.append(request(port, keep=True, tls=tls))
            if one_after_another:
                answered(socks[-1])
        if not one_after_another:
            for s in socks:
                answered(s)
        time.sleep(1)
        at_1 = rss_kib(pids)
        time.sleep(6)
        at_7 = rss_kib(pids)
        return (at_1 - before) / count, (at_7 - before) / count
    finally:
        for s in socks:
            s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, help="connections per measure (default 10,000; 2,000 with --tls)")
    ap.add_argument("--tls", action="store_true", help="HTTPS listeners and clients")
    ap.add_argument("--no-build", action="store_true", help="use the built binary (SLUICE_BIN) without cargo")
    args = ap.parse_args()
    if args.count is None:
        args.count = 2_000 if args.tls else 10_000
    if not shutil.which("nginx"):
        sys.exit("nginx is needed (apt-get install nginx-light)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count * 2 + 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    sluice = SLUICE
    work = tempfile.mkdtemp(prefix="sluice-idle-")
    os.chmod(work, 0o755)  # nginx workers may run as another user
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = []
    try:
        os.makedirs(f"{work}/www")
        with open(f"{work}/www/100b", "w") as f:
            f.write("x" * 99 + "\n")
        tls, listen_ssl, sluice_tls = None, "", {}
        if args.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem", "-days", "1",
                            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                           check=True, **quiet)
            tls = ssl.create_default_context(cafile=f"{work}/cert.pem")
            listen_ssl = (f" ssl; ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem; "
                          "ssl_protocols TLSv1.3")
            sluice_tls = {"tls": {"public_key": f"{work}/cert.pem", "private_key": f"{work}/key.pem"}}
        be_port = free_port()
        common = "daemon off; pid {pid}; error_log {work}/{name}.err warn; events {{ worker_connections 30000; }}"
        with open(f"{work}/backend.conf", "w") as f:
            f.write(common.format(pid=f"{work}/be.pid", work=work, name="be") + f"""
worker_processes 1; worker_rlimit_nofile 30000;
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{be_port} backlog=4096; root {work}/www; }} }}
""")
        backend = subprocess.Popen(["nginx", "-c", f"{work}/backend.conf", "-p", work], **quiet)
        procs.append(backend)
        wait_port(be_port)

        def start(who):
            port = free_port()
            if who == "nginx":
                with open(f"{work}/proxy.conf", "w") as f:
                    f.write(common.format(pid=f"{work}/ng.pid", work=work, name="ng") + f"""
worker_processes 1; worker_rlimit_nofile 30000;
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream be {{ server 127.0.0.1:{be_port}; keepalive 256; }}
  server {{ listen 127.0.0.1:{port} backlog=4096{listen_ssl};
    location /noop {{ proxy_pass http://be/100b; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
                proc = subprocess.Popen(["nginx", "-c", f"{work}/proxy.conf", "-p", work], **quiet)
                wait_port(port)
                return proc, nginx_workers(proc.pid) or [proc.pid], port
            with open(f"{work}/sluice.json", "w") as f:
                json.dump({"version": 3, "port": port, "listen_ip": "127.0.0.1", "timeout": "5s",
                           "idle_timeout": "120s", "host": [f"http://127.0.0.1:{be_port}"], **sluice_tls,
                           "endpoints": [{"endpoint": "/noop", "output_encoding": "no-op",
                                          "backend": [{"url_pattern": "/100b", "encoding": "no-op"}]}]}, f)
            proc = subprocess.Popen([sluice, "run", "-c", f"{work}/sluice.json", "--runtime", who, "--shards", "1"],
                                    env={**os.environ, "RUST_LOG": "warn"}, **quiet)
            wait_port(port)
            return proc, [proc.pid], port

        rows = []
        for who in ("uring", "tokio", "nginx"):
            for one in (True, False):
                proc, pids, port = start(who)
                try:
                    at_1, at_7 = measure(port, pids, args.count, one, tls)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                rows.append((who if who == "nginx" else f"Sluice {who}",
                             "one after another" if one else "all at once", at_1, at_7))
        print(f"\n{args.count:,} idle keep-alive {'HTTPS ' if tls else ''}connections, one no-op request each; "
              "RSS growth per connection "
              "(fresh proxy per row, one shard / worker):\n")
        print("| proxy | opened | KiB per connection at 1 s | at 7 s |")
        print("|---|---|---:|---:|")
        for name, how, at_1, at_7 in rows:
            print(f"| {name} | {how} | {at_1:.2f} | {at_7:.2f} |")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
