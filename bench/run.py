"""
``make bench``: sora2proxy against the physical limit and the alternatives,
side by side, with wrk on loopback.  A benchmark, not a test: it prints a
table and never fails the build.

Contenders: direct to the upstream (nginx), nginx as a reverse proxy with
upstream keep-alive, Twisted's ``ReverseProxyResource``, and sora2proxy three
ways: its defaults (only ``--listen`` and ``--upstream``, plus ``--admin-listen
none`` so that it does not take the usual admin port; access lines on
stdout, as ``twistd -n`` users have them, which the harness sends to a file),
the fastest configuration (the same with ``--access-log off``), and its full
feature set with the access log in a file and the admin port on.  Every row
prints the command line it ran.  Scenarios: small GET
at 1 connection (latency), small GET at 64 connections (requests/s), a 256 MiB
download (MB/s), 1 MiB POSTs of a video job to the demo backend (requests/s).  Each figure is the median of ROUNDS runs, contenders
interleaved round by round; the proxy under test runs on CPU 0, wrk and the
upstream on CPU 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if cpu < 0:  # the two-worker contender gets both cores
        return argv
    return (
        ["taskset", "-c", str(cpu)]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else []
    ) + argv  # type: ignore[operator]


def wait_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened (logs in the bench-* temporary directory)")


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    upstream demo {{ server 127.0.0.1:{demo}; keepalive 64; }}
    upstream origin {{ server 127.0.0.1:{direct}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{direct};
        root {dir}/www;
        location /api/health {{ return 200 '{{"status":"ok"}}'; }}
        location /api/ {{ alias {dir}/www/; }}
        location /demo/ {{ proxy_pass http://demo/; proxy_http_version 1.1; proxy_set_header Connection ""; client_max_body_size 8m; }}
        location = /api/upload {{ proxy_pass http://demo/api/videos; proxy_http_version 1.1; proxy_set_header Connection ""; client_max_body_size 8m; }}
    }}
    server {{
        listen 127.0.0.1:{proxied};
        location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; client_max_body_size 8m; proxy_buffering on; }}
    }}
}}
"""


def twistd_argv(port: int, upstream: str, *options: str) -> list[str]:
    """
    C{twistd -n sora2proxy} on loopback C{port} forwarding to C{upstream}.
    """
    return [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--upstream", upstream, *options]  # fmt: skip


def wrk(url: str, connections: int, seconds: float, script: str | None = None) -> str:
    argv = [
        "wrk",
        "-t",
        "1" if connections == 1 else "2",
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--latency",
    ]
    if script:
        argv += ["-s", script]
    result = subprocess.run(pinned(1, [*argv, url]), capture_output=True, text=True, timeout=seconds + 60)
    return result.stdout


def parse(output: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found:
        figures["rps"] = float(found.group(1))
    found = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output)
    if found:
        scale = {"B": 1e-6, "KB": 1.024e-3, "MB": 1.048576, "GB": 1073.741824}[found.group(2)]
        figures["mbps"] = float(found.group(1)) * scale
    for pct in ("50", "99"):
        found = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", output)
        if found:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
            figures[f"p{pct}"] = float(found.group(1)) * scale
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non2xx"] = float(errors.group(1)) if errors else 0.0
    return figures


def start_nextjs(port: int, direct: int) -> bool:
    """
    Build (once) and start the seed's Next.js route handler, if node is here.
    """
    app = HERE / "nextjs"
    if not shutil.which("npm") or not shutil.which("node"):
        print("no node/npm: the Next.js contender is skipped")
        return False
    if not (app / ".next" / "BUILD_ID").exists():
        print("building the Next.js contender (npm install, next build)...", flush=True)
        steps = (["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], ["npx", "next", "build"])
        for step in steps:
            if subprocess.run(step, cwd=app, capture_output=True, timeout=600).returncode != 0:
                print("the Next.js contender did not build; skipped")
                return False
    env = dict(os.environ, API_URL=f"http://127.0.0.1:{direct}/api", NODE_ENV="production")
    child = subprocess.Popen(
        pinned(0, ["npx", "next", "start", "-p", str(port), "-H", "127.0.0.1"]),
        cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _EXTRA_CHILDREN.append(child)
    _NEXT_COMMAND.append(shlex.join(pinned(0, ["npx", "next", "start", "-p", str(port), "-H", "127.0.0.1"])))
    return True


_EXTRA_CHILDREN: list[subprocess.Popen[bytes]] = []
_NEXT_COMMAND: list[str] = []
#: The sora2proxy rows.
DEFAULTS, FASTEST, FILE_LOG = "sora2proxy defaults", "sora2proxy fastest", "sora2proxy file log"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout (with its own .venv) run in the default configuration as one more "
        "contender, interleaved (repeatable)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("nginx"):
        print("make bench needs wrk and nginx (Debian: wrk nginx-light); skipping")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    tmp.chmod(0o755)  # nginx workers run as nobody
    (tmp / "www").mkdir()
    (tmp / "www" / "small.json").write_bytes(
        b'{"id":"video_1","status":"completed","progress":100,"url":"/v/1.mp4","size":4194304}\n'
    )
    with (tmp / "www" / "big.bin").open("wb") as f:
        f.truncate(args.big_mib * 1024 * 1024)
    post_script = tmp / "post.lua"
    post_script.write_text(  # a video job whose prompt makes the body 1 MiB
        'wrk.method = "POST"\nwrk.body = \'{"prompt": "\' .. string.rep("x", 1048576 - 14) .. \'"}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    ports = {
        name: free_port()
        for name in (
            "direct",
            "proxied",
            "demo",
            "rpr",
            "s2p",
            "admin",
            "next",
            "dflt",
            "fast",
        )
    }
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, **ports))
    children: list[subprocess.Popen[bytes]] = []
    commands: dict[str, str] = {}  # each row's command line, as run

    def spawn(cpu: int, argv: list[str], cwd: Path = ROOT, row: str = "") -> subprocess.Popen[bytes]:
        log = (tmp / f"child-{len(children)}.log").open("wb")
        child = subprocess.Popen(pinned(cpu, argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        children.append(child)
        if row:
            commands[row] = shlex.join(pinned(cpu, argv)) + f"  (output: {log.name})"
        return child

    try:
        spawn(1, [sys.executable, "-m", "sora2proxy.demo", "--port", str(ports["demo"])])
        spawn(1, ["nginx", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"], row="direct")
        commands["nginx"] = f"the same nginx, its proxy_pass server on port {ports['proxied']}"
        wait_port(ports["direct"])
        wait_port(ports["demo"])
        spawn(0, [sys.executable, str(HERE / "upstreams.py"), "rpr", str(ports["rpr"]), str(ports["direct"])],
              row="ReverseProxyResource")  # fmt: skip
        origin = f"http://127.0.0.1:{ports['direct']}/api"
        defaults = spawn(0, twistd_argv(ports["dflt"], origin, "--admin-listen", "none"), row=DEFAULTS)
        spawn(
            0,
            twistd_argv(ports["fast"], origin, "--admin-listen", "none", "--access-log", "off"),
            row=FASTEST,
        )
        spawn(0, [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", os.devnull, "sora2proxy", "--listen",
                  f"tcp:{ports['s2p']}:interface=127.0.0.1", "--admin-listen",
                  f"tcp:{ports['admin']}:interface=127.0.0.1", "--upstream",
                  f"http://127.0.0.1:{ports['direct']}", "--prefix", "/", "--max-body", "8388608",
                  "--max-inflight", "100000", "--access-log", str(tmp / "access.log")], row=FILE_LOG)  # fmt: skip
        baselines = {}
        for checkout in args.baseline:
            row, port = f"baseline {checkout.name}", free_port()
            argv = twistd_argv(port, origin, "--admin-listen", "none")
            argv[0] = str(checkout.resolve() / ".venv" / "bin" / "twistd")
            spawn(0, argv, cwd=checkout.resolve(), row=row)
            baselines[row] = f"http://127.0.0.1:{port}"
        workers_port = free_port()
        spawn(-1, [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", os.devnull, "sora2proxy",
                   "--workers", "2", "--listen", f"tcp:{workers_port}:interface=127.0.0.1", "--admin-listen",
                   "none", "--upstream", f"http://127.0.0.1:{ports['direct']}", "--prefix", "/",
                   "--max-body", "8388608", "--max-inflight", "100000",
                   "--access-log", str(tmp / "access-workers.log")], row="sora2proxy 2 workers*")  # fmt: skip
        nextjs = start_nextjs(ports["next"], ports["direct"])
        for port in (ports["rpr"], ports["s2p"], ports["dflt"], ports["fast"], workers_port):
            wait_port(port)
        if nextjs:
            wait_port(ports["next"], 60)
        contenders = {
            "direct": f"http://127.0.0.1:{ports['direct']}",
            "nginx": f"http://127.0.0.1:{ports['proxied']}",
            "ReverseProxyResource": f"http://127.0.0.1:{ports['rpr']}",
            DEFAULTS: f"http://127.0.0.1:{ports['dflt']}",
            FASTEST: f"http://127.0.0.1:{ports['fast']}",
            FILE_LOG: f"http://127.0.0.1:{ports['s2p']}",
            "sora2proxy 2 workers*": f"http://127.0.0.1:{workers_port}",
        }
        for row, url in baselines.items():
            wait_port(int(url.rsplit(":", 1)[1]))
            contenders[row] = url
        if nextjs:
            contenders["Next.js route (seed)"] = f"http://127.0.0.1:{ports['next']}"
            commands["Next.js route (seed)"] = f"{_NEXT_COMMAND[0]} (in {HERE / 'nextjs'}, API_URL={origin})"
        scenarios = {
            "latency": ("/api/small.json", 1, None),
            "rps64": ("/api/small.json", 64, None),
            "download": ("/api/big.bin", 1, None),
            "post1m": ("/demo/api/videos", 16, str(post_script)),
        }
        time.sleep(1)
        for contender, base in contenders.items():  # warm up
            routed = contender.startswith(("Next.js", "baseline")) or contender in (DEFAULTS, FASTEST)
            wrk(base + ("/api/proxy/small.json" if routed else "/api/small.json"), 8, 1)
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            c: {s: [] for s in scenarios} for c in contenders
        }
        started = time.monotonic()
        for round_number in range(args.rounds):
            for scenario, (path, conns, script) in scenarios.items():
                for contender, base in contenders.items():
                    if contender.startswith(("Next.js", "baseline")) or contender in (DEFAULTS, FASTEST):
                        target = base + (
                            "/api/proxy/upload"
                            if scenario == "post1m"
                            else path.replace("/api/", "/api/proxy/")
                        )
                    elif scenario == "post1m" and contender == "direct":
                        target = f"http://127.0.0.1:{ports['demo']}/api/videos"
                    else:
                        target = base + path
                    seconds = args.seconds * (2 if scenario == "download" else 1)
                    results[contender][scenario].append(parse(wrk(target, conns, seconds, script)))
            print(
                f"round {round_number + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        status_lines = Path(f"/proc/{defaults.pid}/status").read_text().splitlines()
        s2p_rss = int(next(x for x in status_lines if x.startswith("VmHWM:")).split()[1]) / 1024

        def median(contender: str, scenario: str, key: str) -> float:
            values = [r[key] for r in results[contender][scenario] if key in r]
            return statistics.median(values) if values else float("nan")

        direct_p50 = median("direct", "latency", "p50")
        direct_p99 = median("direct", "latency", "p99")
        print()
        print(
            f"{'contender':<26}{'64 conns req/s':>16}{'added p50 ms':>14}{'added p99 ms':>14}{'download MB/s':>15}{'1 MiB POST/s':>14}"
        )
        for contender in contenders:
            print(
                f"{contender:<26}{median(contender, 'rps64', 'rps'):>16,.0f}"
                f"{median(contender, 'latency', 'p50') - direct_p50:>14.3f}"
                f"{median(contender, 'latency', 'p99') - direct_p99:>14.3f}"
                f"{median(contender, 'download', 'mbps'):>15,.0f}{median(contender, 'post1m', 'rps'):>14,.1f}"
            )
        s2p = DEFAULTS
        print()
        print("commands:")
        for contender in contenders:
            print(f"  {contender}: {commands.get(contender, '?')}")
        print()
        print(f"ratios ({DEFAULTS} / other, same run):")
        for other in [c for c in contenders if c not in ("direct", DEFAULTS)]:
            print(
                f"  vs {other:<22} req/s x{median(s2p, 'rps64', 'rps') / median(other, 'rps64', 'rps'):.2f}"
                f"   download x{median(s2p, 'download', 'mbps') / median(other, 'download', 'mbps'):.2f}"
                f"   POST x{median(s2p, 'post1m', 'rps') / median(other, 'post1m', 'rps'):.2f}"
            )
        print(f"{DEFAULTS} peak RSS over the whole run: {s2p_rss:.0f} MiB")
        print("* 2 workers are not pinned: they share both cores with wrk and the upstream")
        bad = {c: sum(r.get("non2xx", 0) for s in results[c].values() for r in s) for c in contenders}
        print(f"non-2xx answers (should be 0): {bad}")
    finally:
        children.extend(_EXTRA_CHILDREN)
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    main()
