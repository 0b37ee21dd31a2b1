#!/usr/bin/env python3
"""Load harness: Sluice beside nginx, same machine, same run, loopback only.

    python3 benches/load/run.py [--duration 10] [--connections 64] [--shards 1] [--idle 10000]

Starts a backend (nginx serving static files), Sluice (release build) twice, on the
uring runtime and on the tokio runtime (`--runtime`), and nginx as a reverse proxy
(proxy_pass, upstream keepalive, as many workers as Sluice has shards/worker threads),
drives each with wrk for a fixed duration, and prints one Markdown table:

  (a) no-op proxy of a 100-byte body: Sluice (uring, tokio) and nginx;
  (b) 2-backend aggregation of two 2 KB JSON bodies: Sluice alone (nginx cannot);
  (c) idle keep-alive connections held open: RSS per connection, all three;
  (d) a large download streamed through no-op, beside nginx proxy_pass: Gbit/s, CPU
      seconds per GiB, and how much each proxy grows; and the same size uploaded (a
      POST with a Content-Length, curl -T) through no-op to a sink that counts it,
      beside nginx proxy_pass with proxy_request_buffering off.

Columns: req/s, p50 and p99 latency (wrk), CPU seconds the proxy process used per
10,000 requests (/proc utime+stime), and the proxy's peak RSS (VmHWM). Everything
stops by itself; nothing but 127.0.0.1 is touched. Needs nginx, wrk and cargo.

    python3 benches/load/run.py --instructions [--duration 5] [--connections 16]

(or benches/load/instructions.sh) counts instead: each proxy (nginx with one worker
and no master, Sluice uring and tokio with one shard/worker) runs alone under
`valgrind --tool=callgrind`; after a warm-up the counters are zeroed, wrk drives the
same load, the counters are dumped, and user-space instructions per request (the
proxy's whole process, libc included) are printed side by side and as ratios to
nginx, for the no-op case and for Sluice's aggregation. Needs valgrind too. With
`--floor`, each runtime's floor too: a program that does the no-op request's four
socket operations (read the client, write the backend, read it, write the client) on
monoio or tokio, set up as the gateway sets them up, with no HTTP beyond finding where
each message ends: what a request costs in the runtime alone; and the same on one
io_uring driven directly (no futures), what a driver below monoio would cost.

    python3 benches/load/run.py --tls [--instructions]

measures the TLS cases instead (openssl makes a P-256 certificate for localhost):
  (e) no-op 100 B to an HTTPS backend (nginx with `ssl`, TLS 1.3) over kept-alive TLS
      connections: Sluice (client_tls with that certificate as its CA) beside nginx
      (`proxy_pass https://`, upstream keepalive, `proxy_ssl_session_reuse on`,
      verification on);
  (f) no-op 100 B from a plain backend through the proxy's own HTTPS listener (wrk
      speaks TLS 1.3 on kept-alive connections): Sluice's root `tls` beside nginx's
      `listen ... ssl`.

    python3 benches/load/run.py --forward [--bulk-mib 1024]

measures the forward proxy instead:
  (h) 100 B through the forward proxy (wrk sends absolute-form requests to the proxy,
      as `curl -x` does, on kept-alive connections): Sluice's "sluice/forward-proxy"
      listener on both runtimes beside squid (no cache, one process) and tinyproxy;
  (i) a CONNECT tunnel's bulk throughput: a client pushes --bulk-mib MiB through
      each proxy's tunnel to a sink that reads until EOF and answers with the count,
      beside the same client writing to the sink directly (Sluice's tunnels splice;
      one more uring row copies, "splice": false). squid or tinyproxy missing: no row.

    python3 benches/load/run.py --scale 1,2,4,8

runs case (a) at each shard count instead: n Sluice shards (uring, tokio) and n nginx
workers on CPUs 0..n-1, the backend and wrk on CPUs of their own; req/s per shard
against n=1 and against nginx at the same n.

    SLUICE_BIN=/path/to/sluice python3 benches/load/run.py --no-build ...

uses a built binary on a machine without cargo (how the 16-core figures were taken).
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")
# The gateway under test: the release build, or SLUICE_BIN (with --no-build, on a
# machine that has the binary but no cargo).
SLUICE = os.environ.get("SLUICE_BIN") or f"{ROOT}/target/release/sluice"
# The runtime-floor programs (--floor): the release examples, or FLOOR_DIR.
FLOOR_DIR = os.environ.get("FLOOR_DIR") or f"{ROOT}/target/release/examples"
# wrk's threads (--wrk-threads); one unless a case needs more load than one can make.
WRK_THREADS = 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after {timeout}s")


def stop(proc, timeout):
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def nginx_workers(master_pid):
    out = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wrk(url, duration, connections, script=None):
    out = subprocess.run(
        ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s", "--latency", url] + (["-s", script] if script else []),
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {
        "rps": rps, "requests": total, "p50": pct(50), "p99": pct(99),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def measure(name, pids, url, args, script=None):
    # Warm up (pools, caches), then measure.
    wrk(url, 2, args.connections, script)
    before = sum(cpu_seconds(p) for p in pids)
    r = wrk(url, args.duration, args.connections, script)
    used = sum(cpu_seconds(p) for p in pids) - before
    r["cpu_per_10k"] = used / (r["requests"] / 10_000) if r["requests"] else float("nan")
    r["peak_rss_mib"] = sum(status_kib(p, "VmHWM") for p in pids) / 1024
    r["name"] = name
    if r["non2xx"] or r["socket_errors"]:
        print(f"warning: {name}: {r['non2xx']} non-2xx, socket errors: {r['socket_errors']}", file=sys.stderr)
    return r


def dumped_instructions(out):
    """The `totals:` (Ir) of the newest callgrind dump `out.N`."""
    dumps = [f for f in os.listdir(os.path.dirname(out)) if f.startswith(os.path.basename(out) + ".")]
    newest = max(dumps, key=lambda f: int(f.rsplit(".", 1)[1]))
    with open(os.path.join(os.path.dirname(out), newest)) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    sys.exit(f"no totals in {newest}")


def instructions_per_request(pid, out, url, args):
    """Warm up, then three windows (zero the callgrind counters, drive the load, dump):
    the median window's Ir per request, the spread, and the requests counted."""
    wrk(url, 3, args.connections)
    windows = []
    for _ in range(3):
        # Idle for a second on either side of the load: the zero and the dump take
        # effect when valgrind next looks, and idle costs (almost) no instructions.
        subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
        time.sleep(1)
        r = wrk(url, args.duration, args.connections)
        time.sleep(1)
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
        if r["non2xx"] or r["socket_errors"]:
            print(f"warning: {url}: {r['non2xx']} non-2xx, socket errors: {r['socket_errors']}", file=sys.stderr)
        counted = dumped_instructions(out)
        if r["requests"] == 0:
            # Under callgrind a window can pass before a request completes (seen with
            # TLS handshakes): said, and left out of the median.
            print(f"warning: {url}: a window counted no request ({counted:,} instructions)", file=sys.stderr)
            continue
        windows.append((counted / r["requests"], r["requests"]))
    if not windows:
        print(f"warning: {url}: no window counted a request", file=sys.stderr)
        return float("nan"), (float("nan"), float("nan")), 0
    windows.sort()
    mid = len(windows) // 2
    return windows[mid][0], (windows[0][0], windows[-1][0]), sum(n for _, n in windows)


CASES = {"noop": "no-op 100 B", "agg": "aggregate 2 x 2 KB", "tlsnoop": "(e) no-op 100 B to an HTTPS backend",
         "https": "(f) no-op 100 B, HTTPS listener"}


def count_instructions(work, ports, ng_port, args, quiet, tls=None):
    """Each proxy alone under callgrind; prints instructions per request. With `tls`
    (the HTTPS listeners' ports), the TLS cases instead, each beside nginx's."""
    results = {}
    sluice = lambda rt, conf: [SLUICE, "run", "-c", f"{work}/{conf}", "--shards", "1",
                               "--runtime", rt]
    nginx = ["nginx", "-c", f"{work}/proxy.conf", "-p", work, "-g", "master_process off;"]
    if tls is None:
        runs = [("nginx", nginx, ng_port, [("noop", f"http://127.0.0.1:{ng_port}/noop")])]
        runs += [(f"Sluice {rt}", sluice(rt, f"sluice-{rt}.json"), port,
                  [(p, f"http://127.0.0.1:{port}/{p}") for p in ("noop", "agg")]) for rt, port in ports.items()]
        if args.floor:
            # Each runtime's floor: the same four socket operations per request and no
            # HTTP (io-uring-server/examples/monoio_floor.rs, tokio-adapter/examples/tokio_floor.rs),
            # and the ring's own below monoio's (io-uring-server/examples/ring_floor.rs).
            for rt, example in (("monoio", "monoio_floor"), ("tokio", "tokio_floor"), ("raw io_uring", "ring_floor")):
                port = free_port()
                runs.append((f"{rt} floor", [f"{FLOOR_DIR}/{example}", str(port), str(args.backend_port)], port,
                             [("noop", f"http://127.0.0.1:{port}/noop")]))
    else:
        runs = [("nginx", nginx, ng_port, [("tlsnoop", f"http://127.0.0.1:{ng_port}/tlsnoop"),
                                          ("https", f"https://127.0.0.1:{tls['nginx']}/noop")])]
        for rt, port in ports.items():
            runs.append((f"Sluice {rt}", sluice(rt, f"sluice-{rt}.json"), port,
                         [("tlsnoop", f"http://127.0.0.1:{port}/tlsnoop")]))
            runs.append((f"Sluice {rt}", sluice(rt, f"sluice-{rt}-https.json"), tls[rt],
                         [("https", f"https://127.0.0.1:{tls[rt]}/noop")]))
    for name, cmd, port, cases in runs:
        out = f"{work}/callgrind-{name.replace(' ', '-')}-{port}"
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd,
                                env={**os.environ, "RUST_LOG": "warn"}, **quiet)
        try:
            wait_port(port, timeout=60)
            for case, url in cases:
                results[(name, case)] = instructions_per_request(proc.pid, out, url, args)
        finally:
            stop(proc, 30)
    print(f"\nUser-space instructions per request (callgrind, whole process), wrk -t1 -c{args.connections}, "
          f"{args.duration}s after a 3s warm-up; 1 nginx worker (no master), 1 Sluice shard / tokio worker.\n")
    print("| case | instructions / request (median of 3) | range | vs nginx, same case | requests counted |")
    print("|---|---:|---:|---:|---:|")
    for (name, case), (per, (low, high), count) in results.items():
        ng = results[("nginx", "noop" if case == "agg" else case)][0]
        print(f"| {CASES[case]}: {name} | {per:,.0f} | {low:,.0f} - {high:,.0f} | {per / ng:.2f}x | {count:,} |")


def measure_table(cases, args, title):
    """Checks every (name, pids, url) case answers 200, measures each, prints the table;
    returns the rows by name."""
    for _, _, url in cases:
        out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url],
                             capture_output=True, text=True).stdout
        if out != "200":
            sys.exit(f"{url} answers {out}, not 200: the setup is broken")
    rows = [measure(name, p, url, args) for name, p, url in cases]
    print(f"\n{title}\n")
    print("| case | req/s | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_per_10k']:.3f} | {r['peak_rss_mib']:.1f} |")
    print()
    return {r["name"]: r for r in rows}


def tls_rows(work, ports, tls_ports, ng_port, args, quiet, procs):
    """Cases (e) and (f): Sluice on both runtimes beside nginx, one table."""
    env = {**os.environ, "RUST_LOG": "warn"}
    pids = {}
    for rt in ports:
        for conf in (f"sluice-{rt}.json", f"sluice-{rt}-https.json"):
            p = subprocess.Popen([SLUICE, "run", "-c", f"{work}/{conf}",
                                  "--shards", str(args.shards), "--runtime", rt], env=env, **quiet)
            procs.append(p)
            pids[conf] = p.pid
    nginx = subprocess.Popen(["nginx", "-c", f"{work}/proxy.conf", "-p", work], **quiet)
    procs.append(nginx)
    for port in list(ports.values()) + list(tls_ports.values()) + [ng_port]:
        wait_port(port)
    time.sleep(0.5)
    ng_pids = nginx_workers(nginx.pid)
    cases = []
    for rt, port in ports.items():
        cases.append((f"(e) no-op 100 B to an HTTPS backend: Sluice {rt}", [pids[f"sluice-{rt}.json"]],
                      f"http://127.0.0.1:{port}/tlsnoop"))
    cases.append(("(e) no-op 100 B to an HTTPS backend: nginx", ng_pids, f"http://127.0.0.1:{ng_port}/tlsnoop"))
    for rt in ports:
        cases.append((f"(f) no-op 100 B, HTTPS listener: Sluice {rt}", [pids[f"sluice-{rt}-https.json"]],
                      f"https://127.0.0.1:{tls_ports[rt]}/noop"))
    cases.append(("(f) no-op 100 B, HTTPS listener: nginx", ng_pids, f"https://127.0.0.1:{tls_ports['nginx']}/noop"))
    by_name = measure_table(cases, args, f"Load over TLS 1.3: wrk -t1 -c{args.connections}, {args.duration}s per row "
                            f"after a 2s warm-up; {args.shards} Sluice shard(s) / tokio worker(s) vs {args.shards} "
                            "nginx worker(s).")
    for case in ("(e) no-op 100 B to an HTTPS backend", "(f) no-op 100 B, HTTPS listener"):
        ng = by_name[f"{case}: nginx"]
        for rt in ports:
            r = by_name[f"{case}: Sluice {rt}"]
            print(f"{case}: Sluice {rt} / nginx: {r['rps'] / ng['rps']:.2f}x req/s, "
                  f"{r['cpu_per_10k'] / ng['cpu_per_10k']:.2f}x CPU per request.")


def plugin_rows(work, ports, ng_port, args, quiet, procs):
    """Case (g): the same no-op request with and without a client plugin (hello, letting
    every call through) on the backend, each runtime, one table."""
    env = {**os.environ, "RUST_LOG": "warn"}
    pids = {}
    for rt in ports:
        p = subprocess.Popen([SLUICE, "run", "-c", f"{work}/sluice-{rt}.json",
                              "--shards", str(args.shards), "--runtime", rt], env=env, **quiet)
        procs.append(p)
        pids[rt] = p.pid
    nginx = subprocess.Popen(["nginx", "-c", f"{work}/proxy.conf", "-p", work], **quiet)
    procs.append(nginx)
    for port in list(ports.values()) + [ng_port]:
        wait_port(port)
    time.sleep(0.5)
    cases = []
    for rt, port in ports.items():
        cases.append((f"(g) no-op 100 B: Sluice {rt}", [pids[rt]], f"http://127.0.0.1:{port}/noop"))
        cases.append((f"(g) no-op 100 B, hello plugin bound: Sluice {rt}", [pids[rt]],
                      f"http://127.0.0.1:{port}/plugged"))
    cases.append(("(g) no-op 100 B: nginx", nginx_workers(nginx.pid), f"http://127.0.0.1:{ng_port}/noop"))
    by_name = measure_table(cases, args, f"Client plugin: wrk -t1 -c{args.connections}, {args.duration}s per row "
                            f"after a 2s warm-up; {args.shards} Sluice shard(s) / tokio worker(s).")
    ng = by_name["(g) no-op 100 B: nginx"]
    for rt in ports:
        a, b = by_name[f"(g) no-op 100 B: Sluice {rt}"], by_name[f"(g) no-op 100 B, hello plugin bound: Sluice {rt}"]
        print(f"Sluice {rt}, plugin / none: {b['rps'] / a['rps']:.2f}x req/s, "
              f"{b['cpu_per_10k'] / a['cpu_per_10k']:.2f}x CPU per request; with the plugin / nginx: "
              f"{b['rps'] / ng['rps']:.2f}x req/s, {b['cpu_per_10k'] / ng['cpu_per_10k']:.2f}x CPU per request.")


SINK = r"""
import socket, sys
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
buf = bytearray(1 << 20)
while True:
    c, _ = srv.accept()
    want = int(c.recv(12, socket.MSG_WAITALL).decode())
    n = 0
    while n < want:
        k = c.recv_into(buf)
        if not k:
            break
        n += k
    c.sendall(str(n).encode())
    c.close()
"""


# The upload case's backend: HTTP/1.1 keep-alive, reads each request's Content-Length
# bytes and answers with how many it got.
UPLOAD_SINK = r"""
import socket, threading
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
def serve(c):
    buf = bytearray(1 << 20)
    while True:
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(65536)
            if not d:
                return
            head += d
        head, rest = head.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        n = len(rest)
        while n < length:
            k = c.recv_into(buf)
            if not k:
                return
            n += k
        body = str(n).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def push(port, mib, connect=None):
    """Sends `mib` MiB to 127.0.0.1:`port` (through a CONNECT to `connect` when given)
    after a 12-digit count (the sink reads that much: squid closes a tunnel whose client
    half-closes, so the end is not a FIN) and reads the sink's count; returns the
    seconds it took."""
    block = b"\x5a" * (1 << 20)
    t = time.time()
    s = socket.create_connection(("127.0.0.1", port))
    if connect:
        s.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(f"the proxy on {port} closed the CONNECT")
            head += chunk
        if not head.split(b" ")[1].startswith(b"2"):
            sys.exit(f"the proxy on {port} answered {head!r}")
    s.sendall(f"{mib << 20:012d}".encode())
    for _ in range(mib):
        s.sendall(block)
    got = b""
    while True:
        chunk = s.recv(64)
        if not chunk:
            break
        got += chunk
    secs = time.time() - t
    s.close()
    if got != str(mib << 20).encode():
        sys.exit(f"the sink counted {got!r} bytes, not {mib << 20}")
    return secs


def forward_rows(work, be_port, args, quiet, procs):
    """Cases (h) and (i): the forward proxy beside squid and tinyproxy, same run."""
    env = {**os.environ, "RUST_LOG": "warn"}
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(sink)
    sink_port = int(sink.stdout.readline())
    proxies, pids, bulk_only = {}, {}, {}
    # Tunnels splice by default; "uring, copying" is the same with "splice": false, for
    # the bulk case only.
    for rt, splice in (("uring", True), ("tokio", True), ("uring", False)):
        port = free_port()
        name = f"Sluice {rt}" if splice else f"Sluice {rt}, copying"
        with open(f"{work}/forward-{rt}-{splice}.json", "w") as f:
            json.dump({"version": 3, "port": free_port(), "listen_ip": "127.0.0.1", "endpoints": [],
                       "extra_config": {"sluice/forward-proxy": {
                           "port": port, "connect": {"enabled": True, "allowed_ports": [sink_port], "splice": splice},
                           "egress": {"ports": [be_port], "allow_cidrs": ["127.0.0.0/8"]}}}}, f)
        p = subprocess.Popen([SLUICE, "run", "-c", f"{work}/forward-{rt}-{splice}.json",
                              "--shards", str(args.shards), "--runtime", rt], env=env, **quiet)
        procs.append(p)
        (proxies if splice else bulk_only)[name], pids[name] = port, [p.pid]
    squid_port, tiny_port = free_port(), free_port()
    os.makedirs(f"{work}/squid", exist_ok=True)
    os.chmod(f"{work}/squid", 0o777)
    with open(f"{work}/squid.conf", "w") as f:
        f.write(f"http_port 127.0.0.1:{squid_port}\nacl SSL_ports port {sink_port}\nacl CONNECT method CONNECT\n"
                "http_access deny CONNECT !SSL_ports\nhttp_access allow localhost\nhttp_access deny all\n"
                f"cache deny all\naccess_log none\ncache_log {work}/squid/cache.log\n"
                f"pid_filename {work}/squid/squid.pid\ncoredump_dir {work}/squid\nshutdown_lifetime 0 seconds\n"
                "max_filedescriptors 30000\n")
    with open(f"{work}/tinyproxy.conf", "w") as f:
        f.write(f"Port {tiny_port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 1024\nAllow 127.0.0.1\n"
                f"LogLevel Error\nLogFile \"{work}/tinyproxy.log\"\nConnectPort {sink_port}\n")
    squid_bin = shutil.which("squid") or "/usr/sbin/squid"
    tiny_bin = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    for name, cmd, port in (("squid", [squid_bin, "-N", "-f", f"{work}/squid.conf"], squid_port),
                            ("tinyproxy", [tiny_bin, "-d", "-c", f"{work}/tinyproxy.conf"], tiny_port)):
        if not os.path.exists(cmd[0]):
            print(f"warning: {cmd[0]} is not installed: no {name} rows", file=sys.stderr)
            continue
        p = subprocess.Popen(cmd, **quiet)
        procs.append(p)
        proxies[name], pids[name] = port, [p.pid]
    for port in list(proxies.values()) + list(bulk_only.values()):
        wait_port(port)
    time.sleep(1)
    target = f"http://127.0.0.1:{be_port}/100b"
    with open(f"{work}/forward.lua", "w") as f:
        f.write(f'wrk.path = "{target}"\nwrk.headers["Host"] = "127.0.0.1:{be_port}"\n')
    for name, port in proxies.items():
        out = subprocess.run(["curl", "-s", "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}",
                              target], capture_output=True, text=True).stdout
        if out != "200":
            sys.exit(f"{name} answers {out}, not 200, through the proxy: the setup is broken")
    rows = [measure(f"(h) 100 B through the forward proxy: {name}", pids[name], f"http://127.0.0.1:{port}/", args,
                    f"{work}/forward.lua") for name, port in proxies.items()]
    print(f"\nForward proxy: wrk -t1 -c{args.connections}, {args.duration}s per row after a 2s warm-up, absolute-form "
          f"requests to each proxy; {args.shards} Sluice shard(s) / tokio worker(s); squid and tinyproxy as packaged.\n")
    print("| case | req/s | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_per_10k']:.3f} | {r['peak_rss_mib']:.1f} |")
    by_name = {r["name"]: r for r in rows}
    # (i) Bulk through each tunnel, beside the direct copy; one warm-up of each first.
    connect = f"127.0.0.1:{sink_port}"
    push(sink_port, 64)
    direct = min(push(sink_port, args.bulk_mib) for _ in range(2))
    print(f"| (i) {args.bulk_mib:,} MiB pushed directly to the sink | {args.bulk_mib / 1024 * 8 / direct:.1f} Gbit/s | | | | |")
    bulk = {}
    for name, port in list(proxies.items()) + list(bulk_only.items()):
        push(port, 64, connect)
        before = sum(cpu_seconds(p) for p in pids[name])
        secs = min(push(port, args.bulk_mib, connect) for _ in range(2))
        cpu = (sum(cpu_seconds(p) for p in pids[name]) - before) / 2
        bulk[name] = secs
        print(f"| (i) {args.bulk_mib:,} MiB through a CONNECT tunnel: {name} | {args.bulk_mib / 1024 * 8 / secs:.1f} Gbit/s "
              f"({direct / secs:.2f}x direct) | | | {cpu / (args.bulk_mib / 1024):.2f} CPU s per GiB | |")
    print()
    for rt in ("uring", "tokio"):
        r = by_name[f"(h) 100 B through the forward proxy: Sluice {rt}"]
        for peer in ("squid", "tinyproxy"):
            q = by_name.get(f"(h) 100 B through the forward proxy: {peer}")
            if q is None:
                continue
            print(f"Sluice {rt} / {peer}, forward: {r['rps'] / q['rps']:.2f}x req/s, "
                  f"{r['cpu_per_10k'] / q['cpu_per_10k']:.2f}x CPU per request.")


def backend_workers(scale):
    """The backend's nginx workers: one, or enough that it keeps up with `max(scale)`
    proxy shards (an nginx worker serves a static 100 B about twice as fast as a shard
    proxies it)."""
    return min(4, max(1, max(scale) // 2)) if scale else 1


def spare_cpus(scale, who):
    """With --scale, the proxy under test has CPUs 0..n-1 (Sluice pins shard i to CPU i,
    nginx gets worker_cpu_affinity auto); the backend and wrk get their own CPUs from the
    top, so that neither takes a shard's."""
    n = os.cpu_count()
    b = backend_workers(scale)
    return list(range(n - b, n)) if who == "backend" else list(range(max(scale), n - b)) or [n - 1]


def pin(cpus):
    return lambda: os.sched_setaffinity(0, cpus)


def scale_rows(work, ports, ng_port, scale, args, quiet):
    """Case (a) at each shard count in `scale`: Sluice uring and tokio with n shards /
    workers, nginx with n workers, wrk with -c (connections x n) on CPUs of its own."""
    global WRK_THREADS
    env = {**os.environ, "RUST_LOG": "warn"}
    wrk_cpus = spare_cpus(scale, "wrk")
    with open(f"{work}/proxy.conf") as f:
        proxy_conf = f.read()
    rows = []
    for n in scale:
        WRK_THREADS = max(1, min(len(wrk_cpus), n))
        conns = args.connections * n
        with open(f"{work}/proxy-{n}.conf", "w") as f:
            f.write(re.sub(r"worker_processes \d+;", f"worker_processes {n}; worker_cpu_affinity auto;", proxy_conf))
        runs = [(f"Sluice {rt}", [SLUICE, "run", "-c", f"{work}/sluice-{rt}.json", "--shards", str(n), "--runtime", rt],
                 port) for rt, port in ports.items()]
        runs.append(("nginx", ["nginx", "-c", f"{work}/proxy-{n}.conf", "-p", work], ng_port))
        for name, cmd, port in runs:
            p = subprocess.Popen(cmd, env=env, preexec_fn=pin(range(n)), **quiet)
            try:
                wait_port(port)
                time.sleep(0.5)
                pids = nginx_workers(p.pid) if name == "nginx" else [p.pid]
                url = f"http://127.0.0.1:{port}/noop"
                saved = args.connections
                args.connections = conns
                os.sched_setaffinity(0, wrk_cpus)  # wrk inherits it
                try:
                    r = measure(name, pids, url, args)
                finally:
                    os.sched_setaffinity(0, range(os.cpu_count()))
                    args.connections = saved
                r["shards"] = n
                rows.append(r)
            finally:
                stop(p, 15)
    print(f"\nScaling, (a) no-op 100 B: n shards / tokio workers / nginx workers on CPUs 0..n-1; backend nginx "
          f"({backend_workers(scale)} workers) and wrk (-c {args.connections} x n, up to {len(wrk_cpus)} threads) "
          f"on CPUs of their own; {args.duration}s per row after a 2s warm-up; {os.cpu_count()} CPUs.\n")
    print("| n | proxy | req/s | req/s per shard | vs its n=1 per shard | vs nginx, same n | p99 ms | CPU s / 10k req |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    first = {}
    by = {(r["name"], r["shards"]): r for r in rows}
    for r in rows:
        per = r["rps"] / r["shards"]
        first.setdefault(r["name"], per)
        ng = by[("nginx", r["shards"])]["rps"]
        print(f"| {r['shards']} | {r['name']} | {r['rps']:,.0f} | {per:,.0f} | {per / first[r['name']]:.2f} | "
              f"{r['rps'] / ng:.2f}x | {r['p99']:.2f} | {r['cpu_per_10k']:.3f} |")


def hold_idle(port, pids, count):
    """Opens `count` keep-alive connections, one request each, and keeps them open."""
    before = sum(status_kib(p, "VmRSS") for p in pids)
    socks = []
    try:
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /noop HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        for s in socks:
            s.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("closed")
                data += chunk
        time.sleep(1)
        after = sum(status_kib(p, "VmRSS") for p in pids)
        return (after - before) / count, len(socks)
    except (OSError, RuntimeError) as e:
        print(f"warning: holding idle connections stopped at {len(socks)}: {e}", file=sys.stderr)
        after = sum(status_kib(p, "VmRSS") for p in pids)
        return ((after - before) / max(len(socks), 1), len(socks))
    finally:
        for s in socks:
            s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--download-mib", type=int, default=1024, help="size of the streamed download case")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--instructions", action="store_true", help="count instructions per request under callgrind")
    ap.add_argument("--floor", action="store_true",
                    help="with --instructions: also each runtime's floor (the same socket operations, no HTTP)")
    ap.add_argument("--tls", action="store_true", help="the TLS cases (e) and (f) instead")
    ap.add_argument("--forward", action="store_true",
                    help="cases (h) and (i) instead: the forward proxy beside squid and tinyproxy, and CONNECT bulk")
    ap.add_argument("--bulk-mib", type=int, default=1024, help="size of the CONNECT bulk case")
    ap.add_argument("--scale", help="shard counts, as 1,2,4,8: case (a) at each, Sluice (both runtimes) beside nginx")
    ap.add_argument("--no-build", action="store_true", help="use the built binary (SLUICE_BIN) without cargo")
    ap.add_argument("--plugin", action="store_true",
                    help="case (g) instead: no-op with the hello client plugin bound (letting calls through) beside without")
    args = ap.parse_args()
    if args.instructions and not shutil.which("valgrind"):
        sys.exit("valgrind is needed (apt-get install valgrind)")
    for tool in ("nginx", "wrk") + (() if args.no_build else ("cargo",)):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install nginx-light wrk)")

    # Room for the idle-connection case, inherited by every process started here.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle * 2 + 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
        if args.floor:
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "sluice-uring", "--example", "monoio_floor",
                            "--example", "ring_floor", "-p", "sluice-tokio", "--example", "tokio_floor"],
                           cwd=ROOT, check=True)
    scale = [int(n) for n in args.scale.split(",")] if args.scale else []
    if scale and max(scale) > os.cpu_count():
        sys.exit(f"--scale {args.scale}: this machine has {os.cpu_count()} CPUs")
    plugins = f"{ROOT}/examples/plugins/target/wasm32-wasip1/release"
    if args.plugin:
        subprocess.run(["cargo", "build", "--release", "-q", "--target", "wasm32-wasip1", "--manifest-path",
                        f"{ROOT}/examples/plugins/Cargo.toml"], check=True)
    work = tempfile.mkdtemp(prefix="sluice-load-")
    os.chmod(work, 0o755)  # nginx workers may run as another user
    procs = []
    try:
        # Backend: nginx with static files.
        os.makedirs(f"{work}/www")
        with open(f"{work}/www/1g", "wb") as f:
            f.truncate(args.download_mib << 20)  # sparse: no disk used
        with open(f"{work}/www/100b", "w") as f:
            f.write("x" * 99 + "\n")
        for name, key in (("a.json", "user"), ("b.json", "orders")):
            doc = {key: {f"field_{i}": f"value number {i} of {name}" for i in range(40)}, f"{key}_count": 40}
            text = json.dumps(doc, separators=(",", ":"))
            doc[f"{key}_pad"] = "p" * max(0, 2048 - len(text) - 20)
            with open(f"{work}/www/{name}", "w") as f:
                json.dump(doc, f, separators=(",", ":"))
        be_port, ng_port = free_port(), free_port()
        args.backend_port = be_port
        sink = subprocess.Popen([sys.executable, "-c", UPLOAD_SINK], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(sink)
        sink_port = int(sink.stdout.readline())
        ports = {"uring": free_port(), "tokio": free_port()}
        # The TLS cases: the backend's and the proxies' HTTPS ports, and a certificate.
        be_tls, tls_ports = free_port(), {"uring": free_port(), "tokio": free_port(), "nginx": free_port()}
        cert, key = f"{work}/cert.pem", f"{work}/key.pem"
        if args.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                            "-addext", "basicConstraints=critical,CA:FALSE"], check=True, capture_output=True)
            os.chmod(key, 0o644)
        ssl = f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.3;"
        common = "daemon off; pid {pid}; error_log {work}/{name}.err warn; events {{ worker_connections 20000; }}"
        with open(f"{work}/backend.conf", "w") as f:
            f.write(common.format(pid=f"{work}/be.pid", work=work, name="be") + f"""
worker_processes {backend_workers(scale)}; worker_rlimit_nofile 30000;
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{be_port} reuseport; root {work}/www; default_type application/json; }}
  {f"server {{ listen 127.0.0.1:{be_tls} ssl reuseport; {ssl} root {work}/www; }}" if args.tls else ""} }}
""")
        ng_tlsnoop = ('location /tlsnoop { proxy_pass https://betls/100b; proxy_http_version 1.1; '
                      'proxy_set_header Connection ""; proxy_ssl_session_reuse on; proxy_ssl_verify on; '
                      f'proxy_ssl_trusted_certificate {cert}; proxy_ssl_name localhost; proxy_ssl_server_name on; '
                      'proxy_ssl_protocols TLSv1.3; }' if args.tls else "")
        ng_https = (f"server {{ listen 127.0.0.1:{tls_ports['nginx']} ssl reuseport; {ssl} location /noop {{ "
                    'proxy_pass http://be/100b; proxy_http_version 1.1; proxy_set_header Connection ""; } }'
                    if args.tls else "")
        with open(f"{work}/proxy.conf", "w") as f:
            f.write(common.format(pid=f"{work}/ng.pid", work=work, name="ng") + f"""
worker_processes {args.shards}; worker_rlimit_nofile 30000;
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream be {{ server 127.0.0.1:{be_port}; keepalive 256; }}
  upstream sink {{ server 127.0.0.1:{sink_port}; keepalive 16; }}
  server {{ listen 127.0.0.1:{ng_port} reuseport;
    location /noop {{ proxy_pass http://be/100b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /download {{ proxy_pass http://be/1g; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_max_temp_file_size 0; proxy_read_timeout 60s; }}
    location /upload {{ proxy_pass http://sink/up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_request_buffering off; client_max_body_size 0; proxy_read_timeout 60s; }}
    {ng_tlsnoop} }}
  upstream betls {{ server 127.0.0.1:{be_tls}; keepalive 256; }}
  {ng_https} }}
""")
        for runtime, port in ports.items():
            with open(f"{work}/sluice-{runtime}.json", "w") as f:
                json.dump({
                    "version": 3, "port": port, "listen_ip": "127.0.0.1", "timeout": "5s", "idle_timeout": "120s",
                    "host": [f"http://127.0.0.1:{be_port}"],
                    **({"plugin": {"folder": plugins, "pattern": ".wasm"}} if args.plugin else {}),
                    "endpoints": [
                        {"endpoint": "/noop", "output_encoding": "no-op",
                         "backend": [{"url_pattern": "/100b", "encoding": "no-op"}]},
                        {"endpoint": "/download", "output_encoding": "no-op", "timeout": "60s",
                         "backend": [{"url_pattern": "/1g", "encoding": "no-op"}]},
                        {"endpoint": "/upload", "method": "POST", "output_encoding": "no-op", "timeout": "60s",
                         "backend": [{"host": [f"http://127.0.0.1:{sink_port}"], "url_pattern": "/up",
                                      "encoding": "no-op"}]},
                        {"endpoint": "/agg", "backend": [
                            {"url_pattern": "/a.json", "allow": ["user", "user_count"], "mapping": {"user_count": "count"}},
                            {"url_pattern": "/b.json", "group": "orders"}]},
                    ] + ([
                        {"endpoint": "/plugged", "output_encoding": "no-op",
                         "backend": [{"url_pattern": "/100b", "encoding": "no-op", "extra_config": {
                             "plugin/http-client": {"name": "hello", "hello": {"path": "/not-this-one"}}}}]},
                    ] if args.plugin else []) + ([
                        {"endpoint": "/tlsnoop", "output_encoding": "no-op",
                         "backend": [{"host": [f"https://localhost:{be_tls}"], "url_pattern": "/100b", "encoding": "no-op",
                                      "extra_config": {"backend/http/client": {"client_tls": {
                                          "ca_certs": [cert], "disable_system_ca_pool": True}}}}]},
                    ] if args.tls else []),
                }, f)
            with open(f"{work}/sluice-{runtime}-https.json", "w") as f:
                json.dump({
                    "version": 3, "port": tls_ports[runtime], "listen_ip": "127.0.0.1", "timeout": "5s",
                    "idle_timeout": "120s", "host": [f"http://127.0.0.1:{be_port}"],
                    "tls": {"public_key": cert, "private_key": key},
                    "endpoints": [{"endpoint": "/noop", "output_encoding": "no-op",
                                   "backend": [{"url_pattern": "/100b", "encoding": "no-op"}]}],
                }, f)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        backend = subprocess.Popen(["nginx", "-c", f"{work}/backend.conf", "-p", work],
                                   preexec_fn=pin(spare_cpus(scale, "backend")) if scale else None, **quiet)
        procs.append(backend)
        wait_port(be_port)
        if args.instructions:
            count_instructions(work, ports, ng_port, args, quiet, tls_ports if args.tls else None)
            return
        if args.tls:
            tls_rows(work, ports, tls_ports, ng_port, args, quiet, procs)
            return
        if args.plugin:
            plugin_rows(work, ports, ng_port, args, quiet, procs)
            return
        if scale:
            scale_rows(work, ports, ng_port, scale, args, quiet)
            return
        if args.forward:
            forward_rows(work, be_port, args, quiet, procs)
            return
        sluices = {}
        for runtime in ports:
            sluices[runtime] = subprocess.Popen(
                [SLUICE, "run", "-c", f"{work}/sluice-{runtime}.json",
                 "--shards", str(args.shards), "--runtime", runtime],
                env={**os.environ, "RUST_LOG": "warn"}, **quiet,
            )
            procs.append(sluices[runtime])
        nginx = subprocess.Popen(["nginx", "-c", f"{work}/proxy.conf", "-p", work], **quiet)
        procs.append(nginx)
        for port in ports.values():
            wait_port(port)
        wait_port(ng_port)
        time.sleep(0.5)
        ng_pids = nginx_workers(nginx.pid)
        urls = [f"http://127.0.0.1:{be_port}/100b", f"http://127.0.0.1:{ng_port}/noop"]
        urls += [f"http://127.0.0.1:{p}/{path}" for p in ports.values() for path in ("noop", "agg")]
        for url in urls:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True).stdout
            if out != "200":
                sys.exit(f"{url} answers {out}, not 200: the setup is broken")

        rows = []
        for runtime, port in ports.items():
            rows.append(measure(f"(a) no-op 100 B: Sluice {runtime}", [sluices[runtime].pid],
                                f"http://127.0.0.1:{port}/noop", args))
        rows.append(measure("(a) no-op 100 B: nginx", ng_pids, f"http://127.0.0.1:{ng_port}/noop", args))
        for runtime, port in ports.items():
            rows.append(measure(f"(b) aggregate 2 x 2 KB: Sluice {runtime}", [sluices[runtime].pid],
                                f"http://127.0.0.1:{port}/agg", args))
        # (d) A large download streamed through: how much does the proxy grow? The backend
        # reads the sparse file once first: a cold page cache would slow whichever
        # runtime goes first (it did: 2.1 Gbit/s cold against 7-8 warm).
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{be_port}/1g"], check=True)
        downloads = {}
        # nginx proxy_pass beside Sluice, in the same run: RSS growth (of the worker),
        # Gbit/s, and the proxy's CPU seconds per GiB.
        targets = {runtime: ([sluices[runtime].pid], port) for runtime, port in ports.items()}
        targets["nginx"] = (ng_pids, ng_port)
        for who, (pids, port) in targets.items():
            rss_before = sum(status_kib(p, "VmRSS") for p in pids)
            cpu_before = sum(cpu_seconds(p) for p in pids)
            t = time.time()
            got = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                                  f"http://127.0.0.1:{port}/download"], capture_output=True, text=True).stdout
            secs = time.time() - t
            cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
            rss_after = sum(status_kib(p, "VmRSS") for p in pids)
            if int(got or 0) != args.download_mib << 20:
                print(f"warning: the {who} download got {got} bytes", file=sys.stderr)
            gib = args.download_mib / 1024
            downloads[who] = ((rss_after - rss_before) / 1024, gib / secs * 8, cpu / gib)
        # The same size uploaded: curl streams the sparse file as the body (no Expect:
        # 100-continue wait), the sink answers with the count.
        uploads = {}
        for who, (pids, port) in targets.items():
            rss_before = sum(status_kib(p, "VmRSS") for p in pids)
            cpu_before = sum(cpu_seconds(p) for p in pids)
            t = time.time()
            got = subprocess.run(["curl", "-s", "-X", "POST", "-H", "Expect:", "-T", f"{work}/www/1g",
                                  f"http://127.0.0.1:{port}/upload"], capture_output=True, text=True).stdout
            secs = time.time() - t
            cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
            rss_after = sum(status_kib(p, "VmRSS") for p in pids)
            gib = args.download_mib / 1024
            # A wrong count (a 413, a cut body) is a failure, never a figure.
            uploads[who] = (((rss_after - rss_before) / 1024, gib / secs * 8, cpu / gib)
                            if got == str(args.download_mib << 20) else f"FAILED: the sink answered {got[:200]!r}")
        idle = {runtime: hold_idle(port, [sluices[runtime].pid], args.idle) for runtime, port in ports.items()}
        idle["nginx"] = hold_idle(ng_port, ng_pids, args.idle)

        print(f"\nLoad: wrk -t1 -c{args.connections}, {args.duration}s per row after a 2s warm-up; "
              f"{args.shards} Sluice shard(s) / tokio worker(s) vs {args.shards} nginx worker(s); "
              "backend: nginx, static files.\n")
        print("| case | req/s | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_per_10k']:.3f} | {r['peak_rss_mib']:.1f} |")
        for who, (kib, count) in idle.items():
            name = who if who == "nginx" else f"Sluice {who}"
            print(f"| (c) {count:,} idle keep-alive connections: {name} | | | | | {kib:.1f} KiB per connection |")
        for who, (grew, gbit, cpu_gib) in downloads.items():
            name = who if who == "nginx" else f"Sluice {who}"
            print(f"| (d) {args.download_mib:,} MiB download through no-op: {name} | | | | | "
                  f"RSS grew {grew:.1f} MiB ({gbit:.1f} Gbit/s, {cpu_gib:.2f} CPU s per GiB) |")
        for who, result in uploads.items():
            name = who if who == "nginx" else f"Sluice {who}"
            figures = result if isinstance(result, str) else (
                f"RSS grew {result[0]:.1f} MiB ({result[1]:.1f} Gbit/s, {result[2]:.2f} CPU s per GiB)")
            print(f"| (d) {args.download_mib:,} MiB upload through no-op: {name} | | | | | {figures} |")
        by_name = {r["name"]: r for r in rows}
        ng = by_name["(a) no-op 100 B: nginx"]
        print()
        for runtime in ports:
            r = by_name[f"(a) no-op 100 B: Sluice {runtime}"]
            print(f"Sluice {runtime} / nginx, no-op: {r['rps'] / ng['rps']:.2f}x req/s, "
                  f"{r['cpu_per_10k'] / ng['cpu_per_10k']:.2f}x CPU per request.")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows, "idle": idle, "downloads": downloads, "uploads": uploads}, f, indent=1)
        if any(isinstance(result, str) for result in uploads.values()):
            sys.exit("an upload failed (see the table)")
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=15)
            except Exception:
                p.kill()
        if not os.environ.get("KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
