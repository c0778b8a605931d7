#!/usr/bin/env python3
"""Turn scripts/bench.sh's raw results into docs/BENCHMARKS.md: medians, and ratios of
envfs to each peer (>1 means envfs is better: faster, or less time)."""
import argparse, collections, datetime, platform, statistics, subprocess

HIGHER_IS_BETTER = {"seq_write_MBps", "seq_read_cold_MBps", "randread_4k_IOPS", "randwrite_4k_IOPS"}
ORDER = ["seq_write_MBps", "seq_read_cold_MBps", "randread_4k_IOPS", "randwrite_4k_IOPS",
         "small_create_s", "small_read_cold_s", "ls_lR_cold_s", "rm_rf_s", "untar_s", "daemon_peak_rss_MiB"]
LABELS = {
    "seq_write_MBps": "sequential write (MB/s)",
    "seq_read_cold_MBps": "sequential read, cold (MB/s)",
    "randread_4k_IOPS": "random 4 KiB read (IOPS)",
    "randwrite_4k_IOPS": "random 4 KiB write (IOPS)",
    "small_create_s": "create small files (s)",
    "small_read_cold_s": "read small files, cold (s)",
    "ls_lR_cold_s": "ls -lR, cold (s)",
    "rm_rf_s": "rm -rf (s)",
    "untar_s": "untar source archive (s)",
    "daemon_peak_rss_MiB": "envfs daemon peak RSS after the sequential write (MiB)",
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results"); ap.add_argument("out")
    ap.add_argument("--runs"); ap.add_argument("--size-mb"); ap.add_argument("--files")
    ap.add_argument("--archive-files"); ap.add_argument("--versions")
    a = ap.parse_args()
    data = collections.defaultdict(list)
    contenders = []
    for line in open(a.results):
        c, w, _run, v = line.rstrip("\n").split("\t")
        if c not in contenders:
            contenders.append(c)
        data[(c, w)].append(float(v))
    med = {k: statistics.median(v) for k, v in data.items()}
    peers = [c for c in contenders if c != "envfs"]
    fmt = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.2f}"
    lines = ["| workload | " + " | ".join(contenders) + " | " + " | ".join(f"envfs vs {p}" for p in peers) + " |",
             "|---|" + "---:|" * (len(contenders) + len(peers))]
    for w in ORDER:
        if not any((c, w) in med for c in contenders):
            continue
        row = [LABELS[w]] + [fmt(med[(c, w)]) if (c, w) in med else "–" for c in contenders]
        for p in peers:
            if ("envfs", w) in med and (p, w) in med and med[(p, w)] and med[("envfs", w)]:
                r = med[("envfs", w)] / med[(p, w)] if w in HIGHER_IS_BETTER else med[(p, w)] / med[("envfs", w)]
                row.append(f"{r:.2f}×")
            else:
                row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    fs = subprocess.run(["sh", "-c", "df -T /var/tmp | tail -1 | awk '{print $2}'"], capture_output=True, text=True).stdout.strip()
    # Sections written by hand or by other scripts survive a rerun: the analysis and the
    # KMS table (scripts/bench_kms.sh).
    kept = ""
    try:
        old = open(a.out).read()
        for tag in ("analysis", "kms"):
            begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
            if begin in old and end in old:
                kept += old[old.index(begin):old.index(end) + len(end)] + "\n\n"
    except FileNotFoundError:
        pass
    with open(a.out, "w") as f:
        f.write(f"""# Benchmarks

Measured by `bash scripts/bench.sh --runs {a.runs} --size-mb {a.size_mb} --files {a.files}` on
{datetime.date.today().isoformat()}: medians of {a.runs} runs, contenders interleaved within each
run, all on the same disk. Ratios are envfs relative to each peer, oriented so that **> 1 means
envfs is better** (more throughput, or less time).

Machine: {platform.machine()}, {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores,
backing filesystem {fs}, kernel {platform.release()}.
Versions: {a.versions}.

Workloads: sequential write of a {a.size_mb} MiB file (1 MiB blocks, fsync at the end) and
sequential read of it after dropping caches and remounting; fio random 4 KiB reads and writes
(psync, 10 s each, fsync at the end) in a 256 MiB file; {a.files} files of 1–16 KiB in 100
directories: create (`cp -r`), read back cold, `ls -lR` cold, `rm -rf`; `tar x` of a
{a.archive_files}-file archive of vendored crate sources.

{chr(10).join(lines)}

Contenders: `plain` is the backing directory itself (the ceiling); `bindfs` is a FUSE
passthrough (the floor any FUSE filesystem pays); gocryptfs and securefs are the peers, with
default settings. envfs runs with its defaults (4 KiB chunks, local key file).

{kept}""")

if __name__ == "__main__":
    main()
