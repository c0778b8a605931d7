#!/usr/bin/env python3
"""Turn scripts/bench.sh's raw results into docs/BENCHMARKS.md: medians, and ratios of
envfs to each peer (>1 means envfs is better: faster, or less time)."""
import argparse, collections, datetime, platform, re, statistics, subprocess

HIGHER_IS_BETTER = {"seq_write_MBps", "seq_read_cold_MBps", "randread_4k_IOPS", "randwrite_4k_IOPS"}
ORDER = ["seq_write_MBps", "seq_read_cold_MBps", "randread_4k_IOPS", "randwrite_4k_IOPS",
         "small_create_s", "small_read_cold_s", "ls_lR_warm_s", "ls_lR_cold_s", "rm_rf_s", "untar_s",
         "fresh_replace_p50_ms", "fresh_replace_p90_ms", "fresh_replace_max_ms", "fresh_replace_stale",
         "fresh_inplace_p50_ms", "fresh_inplace_p90_ms", "fresh_inplace_max_ms", "fresh_inplace_stale",
         "fresh_appear_p50_ms", "fresh_appear_p90_ms", "fresh_appear_max_ms", "fresh_appear_stale",
         "daemon_peak_rss_MiB"]
LABELS = {
    "seq_write_MBps": "sequential write (MB/s)",
    "seq_read_cold_MBps": "sequential read, cold (MB/s)",
    "randread_4k_IOPS": "random 4 KiB read (IOPS)",
    "randwrite_4k_IOPS": "random 4 KiB write (IOPS)",
    "small_create_s": "create small files (s)",
    "small_read_cold_s": "read small files, cold (s)",
    "ls_lR_warm_s": "ls -lR right after reading the tree (s)",
    "ls_lR_cold_s": "ls -lR, cold (s)",
    "fresh_replace_p50_ms": "freshness, outside replace by rename: median (ms)",
    "fresh_replace_p90_ms": "freshness, outside replace by rename: 90th percentile (ms)",
    "fresh_replace_max_ms": "freshness, outside replace by rename: worst (ms)",
    "fresh_replace_stale": "freshness, outside replace: trials still stale after 3 s",
    "fresh_inplace_p50_ms": "freshness, outside in-place write: median (ms)",
    "fresh_inplace_p90_ms": "freshness, outside in-place write: 90th percentile (ms)",
    "fresh_inplace_max_ms": "freshness, outside in-place write: worst (ms)",
    "fresh_inplace_stale": "freshness, outside in-place write: trials still stale after 3 s",
    "fresh_appear_p50_ms": "freshness, new file under a name just found missing: median (ms)",
    "fresh_appear_p90_ms": "freshness, new file under a name just found missing: 90th percentile (ms)",
    "fresh_appear_max_ms": "freshness, new file under a name just found missing: worst (ms)",
    "fresh_appear_stale": "freshness, new file: trials still stale after 3 s",
    "rm_rf_s": "rm -rf (s)",
    "untar_s": "untar source archive (s)",
    "daemon_peak_rss_MiB": "daemon peak RSS after the sequential write (MiB)",
}

def ratio(med, a, b, w):
    """How much better contender a is than b on workload w (>1: a is better)."""
    if w.endswith("_stale") or (a, w) not in med or (b, w) not in med or not med[(a, w)] or not med[(b, w)]:
        return "–"
    r = med[(a, w)] / med[(b, w)] if w in HIGHER_IS_BETTER else med[(b, w)] / med[(a, w)]
    return f"{r:.2f}×"

def fmt(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"

def fmt_row(w, x):
    return f"{x:.0f}" if w.endswith("_stale") else fmt(x)

def table(med, columns, pairs):
    """Absolute medians for `columns`, then one ratio column per (a, b) pair."""
    lines = ["| workload | " + " | ".join(columns) + "".join(f" | {a} vs {b}" for a, b in pairs) + " |",
             "|---|" + "---:|" * (len(columns) + len(pairs))]
    for w in ORDER:
        if not any((c, w) in med for c in columns):
            continue
        row = [LABELS[w]] + [fmt_row(w, med[(c, w)]) if (c, w) in med else "–" for c in columns]
        row += [ratio(med, a, b, w) for a, b in pairs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)

SECTION = re.compile(r"<!-- ([a-z0-9-]+):begin -->.*?<!-- \1:end -->", re.S)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results"); ap.add_argument("out")
    ap.add_argument("--section", default=""); ap.add_argument("--command", default="bash scripts/bench.sh")
    ap.add_argument("--runs"); ap.add_argument("--size-mb"); ap.add_argument("--files")
    ap.add_argument("--archive-files"); ap.add_argument("--versions"); ap.add_argument("--kms-latency")
    ap.add_argument("--fresh-trials", default="20")
    a = ap.parse_args()
    data = collections.defaultdict(list)
    contenders = []
    for line in open(a.results):
        c, w, _run, v = line.rstrip("\n").split("\t")
        if c not in contenders:
            contenders.append(c)
        data[(c, w)].append(float(v))
    med = {k: statistics.median(v) for k, v in data.items()}
    peers = [c for c in contenders if not c.startswith("envfs")]
    variants = [c for c in contenders if c.startswith("envfs") and c != "envfs"]
    today = datetime.date.today().isoformat()
    try:
        old = open(a.out).read()
    except FileNotFoundError:
        old = ""

    if a.section:
        # A partial run (say, the chunk-size sweep): its table replaces one marked section.
        base = "envfs" if "envfs" in contenders else contenders[0]
        pattern = re.compile(rf"<!-- {re.escape(a.section)}:begin -->.*?<!-- {re.escape(a.section)}:end -->", re.S)
        # A heading written inside the section (the first line, "## ...") names the table and
        # survives the rerun; everything else in the section is the generated table.
        found = pattern.search(old)
        first = found.group(0).split("\n")[1] if found else ""
        heading = first + "\n\n" if first.startswith("#") else ""
        body = (f"<!-- {a.section}:begin -->\n{heading}`{a.command}` on {today}, medians of {a.runs} runs; "
                f"ratios > 1 mean the variant is better than `{base}`.\n\n"
                + table(med, contenders, [(v, base) for v in contenders if v != base])
                + f"\n<!-- {a.section}:end -->")
        new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + body + "\n"
        open(a.out, "w").write(new)
        return

    main_table = table(med, peers + ["envfs"], [("envfs", p) for p in peers])
    variant_table = table(med, ["envfs"] + variants, [(v, "envfs") for v in variants]) if variants else ""
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    fs = subprocess.run(["sh", "-c", "df -T /var/tmp | tail -1 | awk '{print $2}'"], capture_output=True, text=True).stdout.strip()
    # Sections written by hand or by other runs survive a rerun: the analysis, the KMS
    # creation table (scripts/bench_kms.sh), the chunk-size sweep, ...
    kept = "\n\n".join(m.group(0) for m in SECTION.finditer(old))
    variants_text = ""
    if variant_table:
        variants_text = f"""
### envfs configurations, relative to envfs with the local key

{variant_table}

`envfs-kms` uses a KMS-compatible server (moto) on loopback and `envfs-kms10` the same
behind a proxy adding {{latency}} ms per call; for both the "cold" steps drop the kernel's caches but keep
the daemon mounted, so its DEK cache is warm (the case the issue's 10% target is about).
New files still need a `GenerateDataKey` each. `envfs-cNk` is a vault made with
`envfs init --chunk-size` N KiB (the chunk-size sweep); `envfs-wb` is mounted with
`-o writeback_cache` (opt-in, see SEMANTICS.md §5); `envfs-nowatch` is mounted with `-o nowatch`
(no change notification, 1 s timeouts: what every mount did before issue 18) and runs the
freshness step only; `envfs-noacl` is mounted with `-o noacl` (no POSIX ACLs, so `ls -l`
stops asking each file for one) and runs the small-file and untar steps only.
"""
    with open(a.out, "w") as f:
        f.write(f"""# Benchmarks

Measured by `{a.command}` on
{today}: medians of {a.runs} runs, contenders interleaved within each
run, all on the same disk. Ratios are envfs relative to each peer, oriented so that **> 1 means
envfs is better** (more throughput, or less time).

Machine: {platform.machine()}, {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores,
backing filesystem {fs}, kernel {platform.release()}.
Versions: {a.versions}.

Workloads: sequential write of a {a.size_mb} MiB file (1 MiB blocks, fsync at the end) and
sequential read of it after dropping caches and remounting; fio random 4 KiB reads and writes
(psync, 10 s each, fsync at the end) in a 256 MiB file; {a.files} files of 1–16 KiB in 100
directories: create (`cp -r`), read back cold, `ls -lR` right after that read (same mount),
`ls -lR` cold, `rm -rf`; `tar x` of a {a.archive_files}-file archive of vendored crate sources.
Freshness (scripts/bench_freshness.py): a second view of the same backing directory (the
backing directory itself for plain and bindfs, a second mount for the encrypted ones;
envfs's with `-o shared`) replaces a file of about 10 KB by rename, overwrites it in place,
or creates a file under a name the mount has just found missing, {a.fresh_trials} times per run
at a random 0–500 ms after the mount under test last looked; each version has a new length.
A sample is the time from the change to the first poll at which the mount's `stat` shows the
new size and its read the new content (polled every 0.5 ms, bounded at 3 s). Percentiles are per run, then the median of
the runs.

{main_table}

Contenders: `plain` is the backing directory itself (the ceiling); `bindfs` is a FUSE
passthrough (the floor any FUSE filesystem pays); gocryptfs and securefs are the peers, with
default settings. envfs runs with its defaults (4 KiB chunks, local key file).
{variants_text.replace("{latency}", a.kms_latency or "10")}
{kept}
""")

if __name__ == "__main__":
    main()
