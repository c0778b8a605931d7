#!/usr/bin/env python3
"""Freshness: how long after a change made behind a mount's back the mount shows it.

scripts/bench.sh runs this once per contender and run. A *writer* directory changes a file
the way a sync client or another host does, and a *reader* directory (the mount under test)
is polled until it shows the new content:

  replace   the new version is written to a temporary name beside the file and renamed
            over it (what Syncthing, Dropbox and rsync do)
  inplace   the file is opened, overwritten with the new version and truncated to its length
  appear    a new file is created under a name the reader has just looked up and not found

Each version has a different length, so a reader still holding the old attributes shows
the old size. Before each trial the reader stats and reads the current version (or stats the
missing name), so the kernel has the entry, attributes and pages cached as a program that
just looked would, then waits a random 0-500 ms, so the change lands at a random age of
those caches. A sample is the time from the writer's rename (or close) returning to the
first poll at which the reader's stat shows the new size and its read the new content; the
reader polls every 0.5 ms and gives up after --bound seconds (the sample is then the bound,
and counted as stale).

Prints one line: p50_ms p90_ms max_ms stale_count
"""
import argparse, os, random, statistics, sys, time

def look(path):
    """What a program sees at `path`: (size from stat, content), or None if it is missing."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            return size, f.read()
    except FileNotFoundError:
        return None

def version(k, size):
    size += (k % 10) * 512
    line = f"version {k:06d}\n".encode()
    return (line * (size // len(line) + 1))[:size]

def wait_for(path, want, bound):
    """Seconds until `path` shows `want` to stat and read, or None past `bound`."""
    t0 = time.monotonic()
    while True:
        if look(path) == (len(want), want):
            return time.monotonic() - t0
        if time.monotonic() - t0 > bound:
            return None
        time.sleep(0.0005)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writer", required=True)
    ap.add_argument("--reader", required=True)
    ap.add_argument("--mode", choices=["replace", "inplace", "appear"], required=True)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--bound", type=float, default=3.0)
    a = ap.parse_args()
    rnd = random.Random(7)
    name = f"fresh-{a.mode}.txt"
    wpath, rpath = os.path.join(a.writer, name), os.path.join(a.reader, name)
    with open(wpath, "wb") as f:
        f.write(version(0, a.size))
    # The first version reaches the reader however long it takes (not a sample).
    if wait_for(rpath, version(0, a.size), 3 * a.bound) is None:
        sys.exit(f"freshness: {rpath} never showed the first version")
    samples, stale = [], 0
    for k in range(1, a.trials + 1):
        new = version(k, a.size)
        if a.mode == "appear":
            wpath, rpath = (os.path.join(d, f"fresh-appear-{k}.txt") for d in (a.writer, a.reader))
            if look(rpath) is not None:
                sys.exit(f"freshness: {rpath} exists before it was created")
        elif look(rpath) != (len(version(k - 1, a.size)), version(k - 1, a.size)):
            # The previous trial timed out; let the reader catch up before the next one.
            wait_for(rpath, version(k - 1, a.size), 3 * a.bound)
        time.sleep(rnd.uniform(0, 0.5))
        if a.mode == "appear":
            with open(wpath, "wb") as f:
                f.write(new)
        elif a.mode == "replace":
            tmp = os.path.join(a.writer, f".{name}.tmp{k}")
            with open(tmp, "wb") as f:
                f.write(new)
            os.replace(tmp, wpath)
        else:
            with open(wpath, "r+b") as f:
                f.write(new)
                f.truncate()
        took = wait_for(rpath, new, a.bound)
        if took is None:
            stale += 1
            took = a.bound
        samples.append(took * 1000)
        if a.mode == "appear":
            os.unlink(wpath)
    os.unlink(os.path.join(a.writer, name))
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
    print(f"{statistics.median(samples):.3f} {p90:.3f} {samples[-1]:.3f} {stale}")

if __name__ == "__main__":
    main()
