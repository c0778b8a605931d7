//! `envfs info` and `envfs key list`: what a vault (and one entry of it) is, as text for
//! people or as JSON for scripts (`--json`). Both forms render one report, so they cannot
//! disagree; nothing in it is secret (ids, sizes, fingerprints, never key material).

use super::{KeyArgs, vault_path, with_path};
use crate::error::{Error, Result};
use crate::format::{KeySlot, NameEncoding, VaultConfig};
use crate::fs::Fs;
use crate::text::json_str;
use crate::vault::Vault;
use crate::vault::keysource::providers_for;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const CIPHER_SUITE: &str = "AES-256-GCM chunks, HKDF-SHA256 subkeys, AES-SIV names";

/// What `info` found: the config (authenticated when a key opened it), the backing store's
/// capabilities, and the entry asked about.
struct Report<'a> {
    backing: &'a Path,
    config: VaultConfig,
    /// (generation, fingerprint) of the authenticated config; `None` when no key opened it.
    authenticated: Option<(u64, String)>,
    store_verdict: String,
    store_rows: Vec<(&'static str, String)>,
    entry: Option<Entry>,
}

/// One entry of the vault (`info BACKING PATH`).
struct Entry {
    path: String,
    backing_path: String,
    kind: String,
    size: u64,
    backing_len: u64,
    /// A regular file's header, when it has content.
    header: Option<Header>,
    regular: bool,
}

struct Header {
    file_id: String,
    chunks: u64,
    /// (kind, key id) of each key the DEK is wrapped for.
    wrapped: Vec<(String, String)>,
}

pub fn info(backing: &Path, path: Option<&Path>, json: bool, keys: &KeyArgs) -> Result<()> {
    let path = path.map(vault_path).transpose()?;
    let path = path.as_deref();
    let (unverified, _) = crate::vault::read_config_unverified(backing)?;
    let opts = keys.options();
    let opened = match providers_for(backing, &opts) {
        Ok(p) => {
            let mut vault = Vault::open(backing, p)?;
            crate::vault::keysource::remember(backing, &mut vault, &opts)?;
            Some(vault)
        }
        // Without a key the vault can still be described, but not verified.
        Err(Error::KeyFile(msg)) if path.is_none() && keys.source().is_none() => {
            eprintln!("envfs: {msg}");
            None
        }
        Err(e) => return Err(e),
    };
    // Describe the config that was authenticated, not an earlier read of it (which the
    // backing store could have swapped in between). Only an authenticated config has a
    // meaningful generation and fingerprint: an unverified one could say anything.
    let config = opened.as_ref().map_or(unverified, |v| v.config.clone());
    let authenticated = opened
        .as_ref()
        .map(|v| (v.config.generation, v.fingerprint().to_string()));
    let caps = crate::backing::probe::probe(
        &crate::backing::BackingRoot::open(backing)?,
        crate::backing::probe::Depth::Full,
    );
    let entry = match (opened, path) {
        (Some(vault), Some(path)) => Some(entry(vault, path)?),
        _ => None,
    };
    let report = Report {
        backing,
        config,
        authenticated,
        store_verdict: caps.verdict(),
        store_rows: caps.rows(),
        entry,
    };
    let out = if json { report.json() } else { report.text() };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

fn entry(vault: Vault, path: &Path) -> Result<Entry> {
    let fs = Fs::new(Arc::new(vault));
    let info = fs.entry_info(path).map_err(|e| with_path(e, path))?;
    let attr = &info.attr;
    let regular = attr.kind == crate::fs::FileKind::File;
    let header = info.header.filter(|_| regular).map(|h| Header {
        file_id: hex::encode(h.file_id),
        chunks: fs.vault().geometry.chunk_count(attr.size),
        wrapped: h.slots.iter().map(slot_row).collect(),
    });
    Ok(Entry {
        path: path.display().to_string(),
        backing_path: info.backing_path.display().to_string(),
        kind: format!("{:?}", attr.kind),
        size: attr.size,
        backing_len: info.backing_len,
        header,
        regular,
    })
}

fn slot_row(slot: &KeySlot) -> (String, String) {
    (slot.provider.name(), slot.key_id.clone())
}

fn encoding(config: &VaultConfig) -> &'static str {
    match config.name_encoding {
        NameEncoding::Base64Url => "base64url",
        NameEncoding::Base32 => "base32",
    }
}

impl Report<'_> {
    fn text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(out, "vault:          {}", self.backing.display());
        let _ = writeln!(out, "vault id:       {}", c.vault_id_hex());
        let _ = writeln!(out, "format version: {}", c.version);
        let _ = writeln!(out, "cipher suite:   {CIPHER_SUITE}");
        let _ = writeln!(out, "chunk size:     {} bytes", c.chunk_size);
        let _ = writeln!(out, "header size:    {} bytes", c.header_size);
        let names = if c.plaintext_names {
            "plaintext (not encrypted)".to_string()
        } else {
            format!(
                "encrypted, {} (names over {} characters stored as hash + sidecar)",
                encoding(c),
                c.long_name_limit
            )
        };
        let _ = writeln!(out, "names:          {names}");
        let _ = writeln!(
            out,
            "key hierarchy:  {}",
            crate::cli::describe_hierarchy(c.key_hierarchy)
        );
        let _ = writeln!(out, "keys:");
        for (i, (kind, id)) in c.slots.iter().map(slot_row).enumerate() {
            let _ = writeln!(out, "  {}  {kind:<8} {id}", i + 1);
        }
        let _ = writeln!(
            out,
            "authenticated:  {}",
            if self.authenticated.is_some() {
                "yes"
            } else {
                "no (no key available)"
            }
        );
        if let Some((generation, fingerprint)) = &self.authenticated {
            let _ = writeln!(out, "generation:     {generation}");
            let _ = writeln!(out, "fingerprint:    {fingerprint}");
        }
        let _ = writeln!(out, "backing store:  {}", self.store_verdict);
        for (name, value) in &self.store_rows {
            let _ = writeln!(out, "  {name:<24}{value}");
        }
        let Some(e) = &self.entry else {
            return out;
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "path:           {}", e.path);
        let _ = writeln!(out, "backing path:   {}", e.backing_path);
        let _ = writeln!(out, "type:           {}", e.kind);
        let _ = writeln!(
            out,
            "size:           {} bytes (backing file {} bytes)",
            e.size, e.backing_len
        );
        if !e.regular {
            return out;
        }
        let Some(Header {
            file_id,
            chunks,
            wrapped,
        }) = &e.header
        else {
            let _ = writeln!(out, "header:         none (empty file)");
            return out;
        };
        let _ = writeln!(
            out,
            "header:         version {}, file id {file_id}",
            crate::format::header::HEADER_VERSION
        );
        let _ = writeln!(out, "chunks:         {chunks}");
        let _ = writeln!(out, "wrapped keys:");
        for (kind, id) in wrapped {
            let _ = writeln!(out, "  {kind:<8} {id}");
        }
        out
    }

    fn json(&self) -> String {
        let c = &self.config;
        let mut j = String::from("{\"vault\":");
        json_str(&mut j, &self.backing.to_string_lossy());
        j.push_str(",\"vault_id\":");
        json_str(&mut j, &c.vault_id_hex());
        let _ = write!(
            j,
            ",\"format_version\":{},\"cipher_suite\":\"{CIPHER_SUITE}\",\"chunk_size\":{},\
             \"header_size\":{},\"names\":{{\"encrypted\":{},\"encoding\":",
            c.version, c.chunk_size, c.header_size, !c.plaintext_names
        );
        if c.plaintext_names {
            j.push_str("null");
        } else {
            json_str(&mut j, encoding(c));
        }
        let _ = write!(
            j,
            ",\"long_name_limit\":{}}},\"key_hierarchy_lifetime_s\":{},\"keys\":",
            c.long_name_limit,
            c.key_hierarchy
                .map_or("null".to_string(), |l| l.to_string())
        );
        key_rows_json(&mut j, &c.slots);
        let _ = write!(j, ",\"authenticated\":{}", self.authenticated.is_some());
        match &self.authenticated {
            Some((generation, fingerprint)) => {
                let _ = write!(j, ",\"generation\":{generation},\"fingerprint\":");
                json_str(&mut j, fingerprint);
            }
            None => j.push_str(",\"generation\":null,\"fingerprint\":null"),
        }
        j.push_str(",\"backing_store\":{\"verdict\":");
        json_str(&mut j, &self.store_verdict);
        for (name, value) in &self.store_rows {
            j.push(',');
            json_str(&mut j, name);
            j.push(':');
            json_str(&mut j, value);
        }
        j.push_str("},\"entry\":");
        match &self.entry {
            None => j.push_str("null"),
            Some(e) => {
                j.push_str("{\"path\":");
                json_str(&mut j, &e.path);
                j.push_str(",\"backing_path\":");
                json_str(&mut j, &e.backing_path);
                j.push_str(",\"type\":");
                json_str(&mut j, &e.kind);
                let _ = write!(
                    j,
                    ",\"size\":{},\"backing_len\":{},\"header\":",
                    e.size, e.backing_len
                );
                match &e.header {
                    None => j.push_str("null"),
                    Some(Header {
                        file_id,
                        chunks,
                        wrapped,
                    }) => {
                        let _ = write!(
                            j,
                            "{{\"version\":{},\"file_id\":\"{file_id}\",\"chunks\":{chunks},\
                             \"wrapped_keys\":[",
                            crate::format::header::HEADER_VERSION
                        );
                        for (i, (kind, id)) in wrapped.iter().enumerate() {
                            if i > 0 {
                                j.push(',');
                            }
                            j.push_str("{\"kind\":");
                            json_str(&mut j, kind);
                            j.push_str(",\"id\":");
                            json_str(&mut j, id);
                            j.push('}');
                        }
                        j.push_str("]}");
                    }
                }
                j.push('}');
            }
        }
        j.push_str("}\n");
        j
    }
}

/// `[{"short_id":…,"kind":…,"id":…},…]`: the vault's key slots, as `key list` shows them.
fn key_rows_json(j: &mut String, slots: &[KeySlot]) {
    j.push('[');
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        j.push_str("{\"short_id\":");
        json_str(j, &crate::vault::short_key_id(slot));
        j.push_str(",\"kind\":");
        json_str(j, &slot.provider.name());
        j.push_str(",\"id\":");
        json_str(j, &slot.key_id);
        j.push('}');
    }
    j.push(']');
}

/// `envfs key list BACKING [--json]`: the vault's keys, by short id, kind and full id.
pub fn key_list(backing: &Path, json: bool, keys: &KeyArgs) -> Result<()> {
    let vault = super::open_vault(backing, keys)?;
    let mut out = String::new();
    if json {
        out.push_str("{\"keys\":");
        key_rows_json(&mut out, &vault.config.slots);
        out.push_str("}\n");
    } else {
        for slot in &vault.config.slots {
            let _ = writeln!(
                out,
                "{}  {:<8} {}",
                crate::vault::short_key_id(slot),
                slot.provider.name(),
                slot.key_id
            );
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}
