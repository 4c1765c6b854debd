#!/usr/bin/env python3
"""Benchmark: how long an application's writes wait during a snapshot.

The scenario of issue 14, under the real qemu-ga 10 that tests/fetch-qemu
unpacks (unix-listen, its own socket and state, plain freeze blocked; only
guest-fsfreeze-freeze-list of this script's own loop-mounted ext4 freezes):

- an application writes a record and fdatasyncs it every 5 ms into the
  filesystem; its hook 10-app pauses it the way a database lock does (the
  freeze hook returns once the application stopped writing; the thaw hook
  lets it go on);
- three more hooks (20-svc1..3) each take 1 s to quiesce;
- just before each freeze, 1 GiB of dirty page cache is written to the
  filesystem (no sync);
- freeze-list, 0.2 s "snapshot", thaw.

The stall is the longest gap between two of the application's completed
writes around the cycle. Variants, interleaved round by round: the stock
script of qemu-ga 10 (run by bash: under dash it stops after the first hook),
ours with parallel = false (presync alone), ours with parallel = true, and the
floor: ours with only 10-app (its own pause, the presync, FIFREEZE and the
0.2 s). Median of the cycles. A report, not a test: it never fails on a target.

Usage: sudo python3 benches/parallel.py [--cycles N] [--dirty-mib N]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QGA = os.path.join(ROOT, "target/test-qemu/qemu-ga-10/usr/sbin/qemu-ga")
STOCK = os.path.join(ROOT, "target/test-qemu/qemu-ga-10/etc/qemu/fsfreeze-hook")

APP = r"""
import os, sys, time
mnt, pause, paused, stamps = sys.argv[1:5]
fd = os.open(os.path.join(mnt, "app.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
out = open(stamps, "a", buffering=1)
record = b"x" * 512
while True:
    if os.path.exists(pause):
        if not os.path.exists(paused):
            open(paused, "w").close()
        time.sleep(0.001)
        continue
    if os.path.exists(paused):
        os.unlink(paused)
    os.write(fd, record)
    os.fdatasync(fd)
    out.write(f"{time.monotonic()}\n")
    time.sleep(0.005)
"""


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    target = json.loads(meta)["target_directory"]
    return os.path.join(target, "x86_64-unknown-linux-gnu", "release", "fsfreeze-hook")


def hook(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)


def hooks_dir(d, shm, services):
    os.makedirs(d)
    pause, paused = os.path.join(shm, "pause"), os.path.join(shm, "paused")
    hook(os.path.join(d, "10-app"),
         f'case "$1" in\nfreeze) touch {pause}; while [ ! -e {paused} ]; do sleep 0.001; done ;;\n'
         f'thaw) rm -f {pause} ;;\nesac')
    for i in range(1, services + 1):
        hook(os.path.join(d, f"20-svc{i}"), '[ "$1" = freeze ] && sleep 1\nexit 0')


class Agent:
    """qemu-ga on its own socket, its hook at `hook_path`."""

    def __init__(self, work, name, hook_path):
        self.dir = os.path.join(work, "qga-" + name)
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "qga.sock")
        self.proc = subprocess.Popen(
            [QGA, "-m", "unix-listen", "-p", self.sock, "-t", self.dir,
             "-f", os.path.join(self.dir, "pid"), "-l", os.path.join(self.dir, "log"),
             "-b", "guest-fsfreeze-freeze", "-F" + hook_path],
            stdin=subprocess.DEVNULL)
        for _ in range(500):
            if os.path.exists(self.sock):
                break
            time.sleep(0.01)
        self.conn = socket.socket(socket.AF_UNIX)
        self.conn.connect(self.sock)
        self.buf = b""
        self.call("guest-sync", {"id": 4242})

    def call(self, command, arguments=None):
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.conn.sendall(json.dumps(msg).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise RuntimeError("qemu-ga closed the socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error']}")
        return reply["return"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def install_ours(work, name, binary, shm, services, parallel):
    d = os.path.join(work, name, "etc")
    hooks_dir(os.path.join(d, "fsfreeze-hook.d"), shm, services)
    shutil.copy(binary, os.path.join(d, "fsfreeze-hook"))
    with open(os.path.join(d, "fsfreeze-hook.conf"), "w") as f:
        f.write(f'log_file = "{d}/hook.log"\nstate_dir = "{shm}/state-{name}"\n'
                f'parallel = {"true" if parallel else "false"}\n')
    return os.path.join(d, "fsfreeze-hook")


def install_stock(work, shm, services):
    d = os.path.join(work, "stock", "etc")
    hooks_dir(os.path.join(d, "fsfreeze-hook.d"), shm, services)
    text = open(STOCK).read().replace("/var/log/qga-fsfreeze-hook.log", f"{d}/hook.log")
    text = text.replace("#!/bin/sh", "#!/bin/bash", 1)
    path = os.path.join(d, "fsfreeze-hook")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    open(f"{d}/hook.log", "w").close()
    return path


def stall(stamps, since, until):
    """The longest gap between completed writes within [since, until]."""
    times = [float(t) for t in open(stamps).read().split()]
    window = [t for t in times if since <= t <= until]
    if len(window) < 2:
        return until - since
    return max(b - a for a, b in zip(window, window[1:]))


def cycle(agent, mnt, dirty_mib, stamps):
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/dirty", "bs=1M",
                    f"count={dirty_mib}", "status=none"], check=True)
    t0 = time.monotonic()
    agent.call("guest-fsfreeze-freeze-list", {"mountpoints": [mnt]})
    frozen = time.monotonic()
    time.sleep(0.2)
    agent.call("guest-fsfreeze-thaw")
    t1 = time.monotonic()
    time.sleep(0.3)
    os.unlink(f"{mnt}/dirty")
    return stall(stamps, t0 - 0.05, t1 + 0.25), frozen - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--dirty-mib", type=int, default=1024)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("benches/parallel.py freezes a loop mount it makes: run it as root")
    for f in (QGA, STOCK):
        if not os.path.exists(f):
            sys.exit(f"{f} missing: run tests/fetch-qemu first")
    binary = build()
    work = tempfile.mkdtemp(prefix="fsfreeze-hook-bench.")
    shm = tempfile.mkdtemp(prefix="fsfreeze-hook-bench.", dir="/dev/shm")
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    image = os.path.join(work, "fs.img")
    with open(image, "wb") as f:
        f.truncate((args.dirty_mib + 1024) << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
    stamps = os.path.join(shm, "stamps")
    app = subprocess.Popen([sys.executable, "-c", APP, mnt, os.path.join(shm, "pause"),
                            os.path.join(shm, "paused"), stamps])
    agents = {}
    try:
        agents = {
            "stock script (bash)": Agent(work, "stock", install_stock(work, shm, 3)),
            "ours, parallel = false": Agent(work, "seq", install_ours(work, "seq", binary, shm, 3, False)),
            "ours, parallel = true": Agent(work, "par", install_ours(work, "par", binary, shm, 3, True)),
            "floor (10-app alone)": Agent(work, "floor", install_ours(work, "floor", binary, shm, 0, False)),
        }
        # One cycle each first: the parallel schedule learns the durations.
        for agent in agents.values():
            cycle(agent, mnt, 64, stamps)
        results = {name: [] for name in agents}
        for _ in range(args.cycles):
            for name, agent in agents.items():
                results[name].append(cycle(agent, mnt, args.dirty_mib, stamps))
    finally:
        for agent in agents.values():
            agent.stop()
        app.kill()
        app.wait()
        subprocess.run(["fsfreeze", "-u", mnt], stderr=subprocess.DEVNULL)
        subprocess.run(["umount", mnt])
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    med = {n: statistics.median(s for s, _ in r) for n, r in results.items()}
    freeze = {n: statistics.median(f for _, f in r) for n, r in results.items()}
    stock = med["stock script (bash)"]
    floor = med["floor (10-app alone)"]
    print(f"application stall, {args.dirty_mib} MiB dirty, 3 x 1 s quiesce, 0.2 s snapshot, "
          f"median of {args.cycles} cycles (qemu-ga 10, freeze-list of a loop ext4)")
    print(f"{'variant':26} {'stall':>8} {'vs stock':>9} {'over floor':>11} {'freeze cmd':>11}")
    for name in results:
        print(f"{name:26} {med[name]:7.3f}s {med[name] / stock:8.2f}x "
              f"{med[name] - floor:+10.3f}s {freeze[name]:10.3f}s")
    ours = med["ours, parallel = true"]
    print(f"target <= 0.35x stock: {'met' if ours <= 0.35 * stock else 'MISSED'} ({ours / stock:.2f}x)")
    print(f"target within 0.3 s of the floor: {'met' if ours - floor <= 0.3 else 'MISSED'} "
          f"({ours - floor:+.3f}s)")


if __name__ == "__main__":
    main()
