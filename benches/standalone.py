#!/usr/bin/env python3
"""Benchmark: freeze and thaw of 8 loop-mounted filesystems (root only).

This binary (`freeze --fs -m ...` then `thaw --fs`, watchdog armed, journal
and log on) against util-linux `fsfreeze`, called once per mountpoint in a
shell loop (freeze all, then thaw all). Runs are interleaved; medians are
reported with the project's target (at most 1.1x). A report, not a test.
The filesystems are ext4 images this script makes, mounts under a temp dir,
and removes; nothing else is ever frozen. The images live on a tmpfs the
script mounts, so that what is timed is the two tools and the kernel's
freeze, not the latency of the disk under the temp dir (on a shared disk
that noise alone swung the ratio from 0.8x to 2.4x between runs).

Usage: sudo python3 benches/standalone.py [--runs N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT = 8


def sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def binary():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    import json

    meta = json.loads(sh("cargo", "metadata", "--format-version", "1", "--no-deps", "--manifest-path",
                         os.path.join(ROOT, "Cargo.toml")))
    return os.path.join(meta["target_directory"], "x86_64-unknown-linux-gnu", "release", "fsfreeze-hook")


def timed(cmds):
    start = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices, FIFREEZE)")
    exe = binary()
    work = tempfile.mkdtemp(prefix="fsfreeze-hook-bench.")
    mounts, devices = [], []
    images = os.path.join(work, "images")
    os.mkdir(images)
    sh("mount", "-t", "tmpfs", "-o", "size=1g,mode=0700", "tmpfs", images)
    try:
        for i in range(COUNT):
            img = os.path.join(images, f"fs{i}.img")
            with open(img, "wb") as f:
                f.truncate(64 << 20)
            sh("mkfs.ext4", "-q", "-F", img)
            dev = sh("losetup", "--find", "--show", img)
            devices.append(dev)
            mnt = os.path.join(work, f"m{i}")
            os.mkdir(mnt)
            sh("mount", dev, mnt)
            mounts.append(mnt)
        hooks = os.path.join(work, "hooks")
        os.mkdir(hooks)
        conf = os.path.join(work, "fsfreeze-hook.conf")
        with open(conf, "w") as f:
            f.write(f'hooks_dir = "{hooks}"\nlog_file = "{work}/hook.log"\nstate_dir = "/run/fsfreeze-hook-bench"\n')
        ms = [a for m in mounts for a in ("-m", m)]
        ours = [[exe, "--config", conf, "freeze", "--fs", *ms, "--auto-thaw", "60s"],
                [exe, "--config", conf, "thaw", "--fs"]]
        loop = " ".join(f"'{m}'" for m in mounts)
        util = [["sh", "-c", f"for m in {loop}; do fsfreeze -f \"$m\"; done; for m in {loop}; do fsfreeze -u \"$m\"; done"]]
        times = {"fsfreeze-hook": [], "fsfreeze loop": []}
        for _ in range(3):
            timed(ours)
            timed(util)
        for _ in range(args.runs):
            times["fsfreeze-hook"].append(timed(ours))
            times["fsfreeze loop"].append(timed(util))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"freeze + thaw of {COUNT} loop-mounted ext4, median of {args.runs} interleaved runs")
        for k, v in med.items():
            print(f"{k:<15} {v * 1000:8.1f}ms")
        ratio = med["fsfreeze-hook"] / med["fsfreeze loop"]
        print(f"target <= 1.1x fsfreeze loop: {'met' if ratio <= 1.1 else 'MISSED'} ({ratio:.2f}x)")
    finally:
        for m in mounts:
            subprocess.run(["fsfreeze", "-u", m], capture_output=True)
            subprocess.run(["umount", m], capture_output=True)
        for d in devices:
            subprocess.run(["losetup", "-d", d], capture_output=True)
        subprocess.run(["umount", images], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree("/run/fsfreeze-hook-bench", ignore_errors=True)


if __name__ == "__main__":
    main()
