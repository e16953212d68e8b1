"""
Peak memory of the proxy, in its default configuration, while it relays a
large download (default 1 GiB) to a slow reader (32 MB/s, first, for
``--slow-mib`` of it) and then to a fast one: backpressure, not buffering,
keeps it flat.  The proxy's RSS is sampled every 20 ms during each download
and compared with its idle RSS before the first (the goal: at most 8 MiB
above idle under the slow reader).  A benchmark, not a test: it prints
figures and never fails.

    python bench/memory.py [--size-mib 1024] [--slow-mib 256] [--rate-mb 32]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
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


def sampled_peak(pid: int, stop: threading.Event, peaks: list[float]) -> None:
    """Sample C{pid}'s RSS every 20 ms until C{stop}; the highest goes into C{peaks}."""
    peak = 0.0
    while not stop.wait(0.02):
        peak = max(peak, rss_mib(pid))
    peaks.append(max(peak, rss_mib(pid)))


def download_sampled(
    pid: int, port: int, rate: float | None, limit_s: float, most: int
) -> tuple[int, float, float]:
    """L{download} while sampling the proxy's RSS; returns (bytes, seconds, peak MiB)."""
    stop, peaks = threading.Event(), []  # type: ignore[var-annotated]
    sampler = threading.Thread(target=sampled_peak, args=(pid, stop, peaks))
    sampler.start()
    try:
        got, seconds = download(port, "/video.mp4", rate, limit_s, most)
    finally:
        stop.set()
        sampler.join()
    return got, seconds, peaks[0]


def download(port: int, path: str, rate: float | None, limit_s: float, most: int = 0) -> tuple[int, float]:
    """Read the response (at most C{most} bytes if given), at most C{rate} bytes per second; returns (bytes, seconds)."""
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
        if most and received >= most:
            break
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
    parser.add_argument("--slow-mib", type=int, default=256)
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
        print("proxy:", " ".join(proxy.args[1:]))  # type: ignore[index]
        try:
            time.sleep(1.0)
            idle = rss_mib(proxy.pid)
            rate = args.rate_mb * 1e6
            most = min(size, args.slow_mib * 2**20)
            got, seconds, slow_peak = download_sampled(proxy.pid, int(port), rate, most / rate + 30, most)
            print(f"slow reader ({args.rate_mb:g} MB/s): {got / 2**20:.0f} MiB in {seconds:.1f} s; proxy RSS "
                  f"{idle:.1f} MiB idle, peak {slow_peak:.1f} MiB: +{slow_peak - idle:.1f} MiB "
                  f"(goal: at most +8 MiB)")  # fmt: skip
            got, seconds, fast_peak = download_sampled(proxy.pid, int(port), None, 120, 0)
            print(f"fast reader: {got / 2**20:.0f} MiB in {seconds:.1f} s "
                  f"({got / seconds / 1e6:.0f} MB/s); proxy RSS peak {fast_peak:.1f} MiB "
                  f"(+{fast_peak - idle:.1f} MiB over idle); high-water mark {peak_rss_mib(proxy.pid):.1f} MiB")  # fmt: skip
        finally:
            for child in (proxy, upstream):
                child.terminate()
                child.wait(10)
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
