#!/usr/bin/env python3
"""Benchmark: one freeze phase over 50 no-op hooks.

Compares the release binary (full logging and journal on) with the stock
hook script of qemu-guest-agent (by default the one of bookworm-backports'
10.0 that tests/fetch-qemu unpacks into target/test-qemu) and with a floor: a bare
shell loop that only execs each hook. Runs are interleaved, so drift in the
machine's load hits all three alike; the median of each is reported with the
ratios the project targets (at most 1.25x the floor, at most 0.35x stock),
plus the runner's peak RSS and the binary's size. A report, not a test: it
never fails on a missed target.

Usage: python3 benches/freeze.py [--runs N] [--stock PATH]   (builds with cargo first)
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HOOKS = 50
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOCK = os.path.join(ROOT, "target/test-qemu/qemu-ga-10/etc/qemu/fsfreeze-hook")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    import json

    target_dir = json.loads(out)["target_directory"]
    return os.path.join(target_dir, "x86_64-unknown-linux-gnu", "release", "fsfreeze-hook")


def make_hooks(d):
    os.mkdir(d)
    for i in range(HOOKS):
        p = os.path.join(d, f"{i:02d}-noop")
        with open(p, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(p, 0o755)


def setup(work, binary, stock_script):
    """Three installs, each a hook beside its own fsfreeze-hook.d."""
    cmds = {}
    # ours, configured as installed: conf beside it, private log and state
    ours = os.path.join(work, "ours")
    os.mkdir(ours)
    make_hooks(os.path.join(ours, "fsfreeze-hook.d"))
    shutil.copy(binary, os.path.join(ours, "fsfreeze-hook"))
    with open(os.path.join(ours, "fsfreeze-hook.conf"), "w") as f:
        f.write(f'log_file = "{ours}/hook.log"\nstate_dir = "{ours}/state"\n')
    cmds["fsfreeze-hook"] = [os.path.join(ours, "fsfreeze-hook"), "freeze"]
    # stock: Debian's script, its log moved into the temp dir (same work)
    stock = os.path.join(work, "stock")
    os.mkdir(stock)
    make_hooks(os.path.join(stock, "fsfreeze-hook.d"))
    with open(stock_script) as f:
        text = f.read().replace("/var/log/qga-fsfreeze-hook.log", f"{stock}/hook.log")
    with open(os.path.join(stock, "fsfreeze-hook"), "w") as f:
        f.write(text)
    # Created first: the script of qemu-ga 9.1 and later falls back to syslog
    # when its log is not writable, and under dash then dies (see README).
    open(os.path.join(stock, "hook.log"), "w").close()
    os.chmod(os.path.join(stock, "fsfreeze-hook"), 0o755)
    cmds["stock script"] = [os.path.join(stock, "fsfreeze-hook"), "freeze"]
    # floor: only the execs
    floor = os.path.join(work, "floor")
    os.mkdir(floor)
    make_hooks(os.path.join(floor, "fsfreeze-hook.d"))
    cmds["floor (sh loop)"] = [
        "/bin/sh", "-c", f'for f in {floor}/fsfreeze-hook.d/*; do "$f" freeze; done',
    ]
    return cmds, ours


def time_once(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_kib(ours):
    """The runner's own peak RSS, read by a last hook from its parent's
    /proc status (the runner is that hook's parent)."""
    probe = os.path.join(ours, "fsfreeze-hook.d", "99-rss-probe")
    out = os.path.join(ours, "rss")
    with open(probe, "w") as f:
        f.write(f"#!/bin/sh\ngrep VmHWM /proc/$PPID/status > '{out}'\n")
    os.chmod(probe, 0o755)
    try:
        subprocess.run([os.path.join(ours, "fsfreeze-hook"), "freeze"], check=True)
        with open(out) as f:
            return int(f.read().split()[1])
    finally:
        os.remove(probe)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--stock", default=STOCK, help="the stock hook script to compare with")
    args = ap.parse_args()
    if not os.path.exists(args.stock):
        sys.exit(f"{args.stock} missing: run tests/fetch-qemu (or pass --stock)")
    binary = build()
    with tempfile.TemporaryDirectory(prefix="fsfreeze-hook-bench.") as work:
        cmds, ours = setup(work, binary, args.stock)
        times = {name: [] for name in cmds}
        for name, cmd in cmds.items():  # warm-up
            for _ in range(3):
                time_once(cmd)
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                times[name].append(time_once(cmd))
        rss = peak_rss_kib(ours)
        # As root each freeze leaves a guard (max_frozen): the thaw stands
        # the last one down, so that none outlives the benchmark. (It says
        # the probe hook froze and is gone, and exits 1: that is no error
        # here.)
        subprocess.run([os.path.join(ours, "fsfreeze-hook"), "thaw"], check=False)
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = med["floor (sh loop)"]
    stock = med["stock script"]
    ours_t = med["fsfreeze-hook"]
    print(f"freeze phase, {HOOKS} no-op hooks, median of {args.runs} interleaved runs")
    print(f"stock script: {args.stock}")
    print(f"{'command':<18} {'median':>10} {'vs floor':>9} {'vs stock':>9}")
    for name in cmds:
        print(f"{name:<18} {med[name] * 1000:>8.1f}ms {med[name] / floor:>8.2f}x {med[name] / stock:>8.2f}x")
    ok_floor = ours_t / floor <= 1.25
    ok_stock = ours_t / stock <= 0.35
    print(f"target <= 1.25x floor: {'met' if ok_floor else 'MISSED'} ({ours_t / floor:.2f}x)")
    print(f"target <= 0.35x stock: {'met' if ok_stock else 'MISSED'} ({ours_t / stock:.2f}x)")
    print(f"runner peak RSS: {rss} KiB; binary size: {os.path.getsize(binary) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
