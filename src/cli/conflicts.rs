//! `envfs conflicts`: list sync clients' copies with both sides' sizes and times, and
//! resolve them (`--keep`), as a dry run unless `--apply` is given. The work is the core's
//! (`fs/conflicts.rs`); this is how it is asked for and shown. Output formats are
//! contracts (docs/CLI.md).

use super::exit;
use crate::error::{Error, Result};
use crate::format::sync_names::CopyKind;
use crate::fs::Fs;
use crate::fs::conflicts::{Conflict, Keep, Resolution, Version};
use crate::text::{count, escape_path, human_bytes, json_str, utc};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// What `--keep` was given: `newest`, or a plaintext path inside the vault.
pub fn parse_keep(arg: &str) -> Result<Keep> {
    if arg == "newest" {
        return Ok(Keep::Newest);
    }
    Ok(Keep::Path(super::vault_path(Path::new(arg))?))
}

pub fn run(fs: &Fs, keep: Option<Keep>, apply: bool, json: bool) -> Result<()> {
    let conflicts = fs.conflicts()?;
    let mut out = std::io::stdout().lock();
    let Some(keep) = keep else {
        let text = if json {
            list_json(&conflicts)
        } else {
            list_text(&conflicts)
        };
        out.write_all(text.as_bytes())?;
        return Ok(());
    };
    let plan = fs.plan_resolution(&conflicts, &keep)?;
    let mut failed = 0;
    let mut lines = String::new();
    let mut done = Vec::new();
    for resolution in &plan {
        let outcome = if !apply {
            resolution.refused.clone().map(Err).unwrap_or(Ok(()))
        } else {
            fs.resolve_conflict(resolution).map_err(|e| e.to_string())
        };
        if outcome.is_err() {
            failed += 1;
        }
        if json {
            done.push((resolution, outcome));
        } else {
            plan_text(&mut lines, resolution, apply, &outcome);
        }
    }
    if json {
        out.write_all(plan_json(&done, apply).as_bytes())?;
    } else {
        let verb = if apply { "resolved" } else { "would resolve" };
        let _ = writeln!(
            lines,
            "{verb} {} of {}{}",
            plan.len() - failed,
            count(plan.len(), "conflict", "conflicts"),
            if apply { "" } else { " (dry run: add --apply)" }
        );
        out.write_all(lines.as_bytes())?;
    }
    out.flush()?;
    if failed > 0 {
        return Err(Error::Reported(
            exit::INCOMPLETE,
            format!(
                "{} left as they were",
                count(failed, "conflict", "conflicts")
            ),
        ));
    }
    Ok(())
}

fn what(v: &Version) -> String {
    match v.copy {
        None => "original".into(),
        Some((client, CopyKind::Conflict)) => format!("{} conflict copy", client.label()),
        Some((client, CopyKind::Version)) => format!("{} kept version", client.label()),
    }
}

fn version_text(v: &Version) -> String {
    format!(
        "{} ({}, {}, changed {})",
        escape_path(&v.path),
        what(v),
        human_bytes(v.size),
        utc(v.mtime)
    )
}

fn list_text(conflicts: &[Conflict]) -> String {
    let mut s = String::new();
    let mut copies = 0;
    for c in conflicts {
        match &c.original {
            Some(v) => {
                let _ = writeln!(s, "{}", version_text(v));
            }
            None => {
                let _ = writeln!(s, "{} (original removed)", escape_path(&c.path));
            }
        }
        for v in &c.copies {
            let _ = writeln!(s, "  {}", version_text(v));
            copies += 1;
        }
    }
    match conflicts.len() {
        0 => s.push_str("no conflicts\n"),
        n => {
            let _ = writeln!(
                s,
                "{} of {}; resolve with --keep newest or --keep PATH (a dry run), then add \
                 --apply",
                count(copies, "copy", "copies"),
                count(n, "entry", "entries")
            );
        }
    }
    s
}

fn plan_text(
    s: &mut String,
    r: &Resolution,
    apply: bool,
    outcome: &std::result::Result<(), String>,
) {
    let original = escape_path(&r.conflict.path);
    if let Err(why) = outcome {
        let _ = writeln!(s, "{original}: left as it is: {why}");
        return;
    }
    let (keep, remove) = if apply {
        ("kept", "removed")
    } else {
        ("would keep", "would remove")
    };
    let _ = writeln!(s, "{original}: {keep} {}", version_text(&r.keep));
    for v in &r.remove {
        if v.copy.is_some() || r.keep.copy.is_some() {
            let how = if v.copy.is_none() { " (replaced)" } else { "" };
            let _ = writeln!(s, "  {remove} {}{how}", version_text(v));
        }
    }
}

fn version_json(j: &mut String, v: &Version) {
    j.push_str("{\"path\":");
    json_str(j, &v.path.to_string_lossy());
    j.push_str(",\"backing_path\":");
    json_str(j, &v.backing_path.to_string_lossy());
    match v.copy {
        None => j.push_str(",\"client\":null,\"kind\":\"original\""),
        Some((client, kind)) => {
            j.push_str(",\"client\":");
            json_str(j, client.label());
            j.push_str(match kind {
                CopyKind::Conflict => ",\"kind\":\"conflict\"",
                CopyKind::Version => ",\"kind\":\"version\"",
            });
        }
    }
    let mtime = v
        .mtime
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = write!(j, ",\"size\":{},\"mtime\":{mtime:.3},\"changed\":", v.size);
    json_str(j, &utc(v.mtime));
    j.push('}');
}

fn conflict_json(j: &mut String, c: &Conflict) {
    j.push_str("{\"path\":");
    json_str(j, &c.path.to_string_lossy());
    j.push_str(",\"original\":");
    match &c.original {
        Some(v) => version_json(j, v),
        None => j.push_str("null"),
    }
    j.push_str(",\"copies\":[");
    for (i, v) in c.copies.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        version_json(j, v);
    }
    j.push_str("]}");
}

fn list_json(conflicts: &[Conflict]) -> String {
    let mut j = String::from("{\"conflicts\":[");
    for (i, c) in conflicts.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        conflict_json(&mut j, c);
    }
    j.push_str("]}\n");
    j
}

fn plan_json(done: &[(&Resolution, std::result::Result<(), String>)], apply: bool) -> String {
    let mut j = format!("{{\"applied\":{apply},\"resolutions\":[");
    for (i, (r, outcome)) in done.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        j.push_str("{\"conflict\":");
        conflict_json(&mut j, &r.conflict);
        j.push_str(",\"keep\":");
        version_json(&mut j, &r.keep);
        j.push_str(",\"remove\":[");
        let removed: Vec<&PathBuf> = r.remove.iter().map(|v| &v.path).collect();
        for (k, p) in removed.iter().enumerate() {
            if k > 0 {
                j.push(',');
            }
            json_str(&mut j, &p.to_string_lossy());
        }
        j.push_str("],\"error\":");
        match outcome {
            Ok(()) => j.push_str("null"),
            Err(why) => json_str(&mut j, why),
        }
        j.push('}');
    }
    j.push_str("]}\n");
    j
}
