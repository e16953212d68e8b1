"""
Peak memory of the proxy while it relays a large download (default 1 GiB)
to a fast reader and to a slow one (32 MB/s): backpressure, not buffering,
keeps it flat.  A benchmark, not a test: it prints figures and never fails.

    python bench/memory.py [--size-mib 1024] [--rate-mb 32]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def start(argv: list[str], pattern: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        found = re.search(pattern, line)
        if found:
            return child, found.group(1)
    child.kill()
    raise SystemExit(f"{argv[0]} did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def download(port: int, path: str, rate: float | None, limit_s: float) -> tuple[int, float]:
    """Read the whole response, at most C{rate} bytes per second; returns (bytes, seconds)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    started = time.monotonic()
    received = 0
    while time.monotonic() - started < limit_s:
        data = sock.recv(256 * 1024)
        if not data:
            break
        received += len(data)
        if rate:
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    sock.close()
    return received, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate-mb", type=float, default=32.0)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp, "video.mp4")
        with big.open("wb") as f:
            f.truncate(size)  # sparse: zeros, no disk
        upstream, up_port = start(
            [str(BIN / "twistd"), "-n", "--pidfile=", "web", "--path", tmp, "--listen",
             "tcp:0:interface=127.0.0.1"], r"Site starting on (\d+)")  # fmt: skip
        proxy, port = start(
            [str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--listen", "tcp:0:interface=127.0.0.1",
             "--upstream", f"http://127.0.0.1:{up_port}", "--prefix", "/", "--health-path", "/", "--admin-listen", "none"],
            r"ProxySite starting on (\d+)")  # fmt: skip
        try:
            time.sleep(0.5)
            before = rss_mib(proxy.pid)
            got, seconds = download(int(port), "/video.mp4", None, 120)
            fast_peak = peak_rss_mib(proxy.pid)
            print(f"fast reader: {got / 2**20:.0f} MiB in {seconds:.1f} s "
                  f"({got / seconds / 1e6:.0f} MB/s); proxy RSS {before:.0f} MiB before, "
                  f"peak {fast_peak:.0f} MiB")  # fmt: skip
            rate = args.rate_mb * 1e6
            limit = size / rate + 30
            got, seconds = download(int(port), "/video.mp4", rate, limit)
            slow_peak = peak_rss_mib(proxy.pid)
            print(f"slow reader ({args.rate_mb:g} MB/s): {got / 2**20:.0f} MiB in {seconds:.1f} s; "
                  f"proxy peak RSS {slow_peak:.0f} MiB (target: at most 64 MiB)")  # fmt: skip
        finally:
            for child in (proxy, upstream):
                child.terminate()
                child.wait(10)
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
