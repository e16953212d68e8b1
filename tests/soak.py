"""
The fault-injection soak: bounded load through a real proxy process while
the upstream is killed and restarted, answers slowly and resets connections.
Afterwards: no request was left hanging, every answer is the upstream's or a
documented error, no POST reached the upstream twice, and the proxy's memory
is back to its starting level.

``python -m tests.soak --seconds 120`` (``make soak``) prints the counts; the
test suite runs a short version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .helpers import refused_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCUMENTED = {
    "ECONNREFUSED",
    "TIMEOUT",
    "HEALTH_CHECK_FAILED",
    "UPSTREAM_ERROR",
    "CIRCUIT_OPEN",
    "OVERLOADED",
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(
    argv: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    import re

    child = subprocess.Popen(
        argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert child.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        found = re.search(pattern, line)
        if found:
            threading.Thread(target=lambda: [None for _ in child.stdout], daemon=True).start()  # type: ignore[union-attr]
            return child, found.group(1)
    child.kill()
    raise RuntimeError(f"{argv} did not start")


def request(port: int, method: str, path: str, body: bytes = b"", timeout: float = 20) -> tuple[int, str]:
    """One request; returns (status, errorType or '') or (0, 'HANG'/'DROP')."""
    data = (
        f"{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        return 0, "HANG"
    except OSError:
        return 0, "DROP"
    answer = b"".join(chunks)
    if not answer.startswith(b"HTTP/1.1 "):
        return 0, "DROP"
    status = int(answer.split(b" ", 2)[1])
    head, _, payload = answer.partition(b"\r\n\r\n")
    error_type = ""
    if b"x-upstream: yes" not in head.lower() and status >= 400:
        try:
            error_type = json.loads(payload)["details"]["errorType"]
        except (ValueError, KeyError, TypeError):
            error_type = "UNPARSEABLE"
    return status, error_type


def run_soak(
    seconds: float, clients: int = 4, chaos_every: float = 1.5, min_kills: int = 0
) -> dict[str, Any]:
    """
    Run the soak; returns its report (the caller asserts on it).  It runs on
    past C{seconds} (by at most 30 s) until the upstream was killed
    C{min_kills} times: on a busy machine a restart takes longer.
    """
    workdir = tempfile.mkdtemp(prefix="soak-")
    post_log = os.path.join(workdir, "posts.log")
    env = dict(os.environ, SORA2PROXY_POST_LOG=post_log)
    upstream_port = refused_port()  # free now; the upstream binds it, and rebinds it after each kill
    upstream_argv = [sys.executable, "-m", "tests.upstream_main", str(upstream_port)]
    upstream, _ = start(upstream_argv, r"listening on (\d+)", env)
    proxy, port_text = start(
        [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", "tcp:0:interface=127.0.0.1",
         "--admin-listen", "tcp:0:interface=127.0.0.1", "--upstream", f"http://127.0.0.1:{upstream_port}/api",
         "--health-interval", "0.5", "--timeout", "2", "--deadline", "6", "--backoff", "0.1",
         "--eject-after", "10", "--eject-time", "1", "--idempotency-store", "off"],
        r"ProxySite starting on (\d+)",
    )  # fmt: skip
    port = int(port_text)
    results: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    end = [time.monotonic() + seconds]  # moved later by chaos() until min_kills is reached
    hard_stop = end[0] + 30
    posts = 0
    try:
        time.sleep(1.0)
        for _ in range(50):  # warm up before the memory baseline
            request(port, "GET", "/api/proxy/warm")
        rss_start = rss_mib(proxy.pid)

        def client(seed: int) -> None:
            nonlocal posts
            rng = random.Random(seed)
            sent = 0
            while time.monotonic() < end[0]:
                kind = rng.choice(["ok"] * 5 + ["slowish", "reset"] + ["post"] * 2)
                if kind == "post":
                    with lock:
                        posts += 1
                        body = f"post-{seed}-{posts}".encode()
                    status, error = request(port, "POST", "/api/proxy/jobs", body)
                else:
                    status, error = request(port, "GET", f"/api/proxy/{kind}")
                sent += 1
                label = f"{status} {error}".strip()
                with lock:
                    results[label] += 1
                    if status == 0 or error not in DOCUMENTED | {""}:
                        failures.append(f"{kind}: {label}")

        def chaos() -> None:
            nonlocal upstream
            rng = random.Random(7)
            kills = 0
            while time.monotonic() < end[0] - 1:
                time.sleep(chaos_every * rng.uniform(0.5, 1.5))
                upstream.send_signal(signal.SIGKILL)
                upstream.wait()
                kills += 1
                with lock:
                    results["upstream killed"] += 1
                time.sleep(0.5)
                upstream, _ = start(upstream_argv, r"listening on (\d+)", env)
                if kills < min_kills:
                    end[0] = max(end[0], min(hard_stop, time.monotonic() + 1.5 * chaos_every + 1))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        threads.append(threading.Thread(target=chaos))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 90)
        time.sleep(2.0)  # idle: pooled connections and timers settle
        for _ in range(50):
            request(port, "GET", "/api/proxy/after")
        rss_end = rss_mib(proxy.pid)
        sent_posts = (
            Counter(Path(post_log).read_bytes().splitlines()) if os.path.exists(post_log) else Counter()
        )
        duplicates = {body.decode(): n for body, n in sent_posts.items() if n > 1}
        return {
            "seconds": seconds,
            "requests": sum(v for k, v in results.items() if k != "upstream killed"),
            "answers": dict(sorted(results.items())),
            "failures": failures[:20],
            "failure_count": len(failures),
            "posts_sent": posts,
            "posts_reaching_upstream": sum(sent_posts.values()),
            "duplicate_posts": duplicates,
            "rss_start_mib": round(rss_start, 1),
            "rss_end_mib": round(rss_end, 1),
            "proxy_alive": proxy.poll() is None,
        }
    finally:
        for child in (proxy, upstream):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--chaos-every", type=float, default=3.0)
    args = parser.parse_args()
    report = run_soak(args.seconds, args.clients, args.chaos_every)
    print(json.dumps(report, indent=2))
    ok = (
        report["failure_count"] == 0
        and not report["duplicate_posts"]
        and report["proxy_alive"]
        and report["rss_end_mib"] <= report["rss_start_mib"] + 10
    )
    print("soak:", "OK" if ok else "PROBLEMS")


if __name__ == "__main__":
    main()
