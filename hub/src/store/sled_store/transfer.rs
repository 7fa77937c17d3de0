//! Record streams, what backups carry: for each record, the tree name (one length byte, then
//! the name), the key and the value (each a big-endian `u32` length, then the bytes). Retired
//! trees that older versions wrote are read and dropped.

use std::path::Path;

use super::{RETIRED_TREES, SledStore, TREES, backend, corrupt};
use crate::store::{StoreError, StoreResult};

/// Writes every record of `db` as a record stream (see the module doc); returns the count.
pub(super) fn export(db: &sled::Db, out: &mut dyn std::io::Write) -> StoreResult<u64> {
    let io = |e: std::io::Error| StoreError::Backend {
        op: "export",
        message: e.to_string(),
    };
    let mut n = 0;
    for name in TREES {
        let tree = db.open_tree(name).map_err(backend("export"))?;
        for item in tree.iter() {
            let (k, v) = item.map_err(backend("export"))?;
            out.write_all(&[name.len() as u8]).map_err(io)?;
            out.write_all(name.as_bytes()).map_err(io)?;
            out.write_all(&(k.len() as u32).to_be_bytes()).map_err(io)?;
            out.write_all(&k).map_err(io)?;
            out.write_all(&(v.len() as u32).to_be_bytes()).map_err(io)?;
            out.write_all(&v).map_err(io)?;
            n += 1;
        }
    }
    Ok(n)
}

impl SledStore {
    /// Loads a record stream written by [`Store::export_records`](crate::store::Store::export_records) into a new store at `dir`
    /// (which must not hold one); returns the number of records.
    pub fn import_records(dir: &Path, input: &mut dyn std::io::Read) -> StoreResult<u64> {
        let io = |e: std::io::Error| StoreError::Backend {
            op: "import",
            message: e.to_string(),
        };
        if dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
            return Err(StoreError::Conflict(format!(
                "{} already holds a store",
                dir.display()
            )));
        }
        // No background flusher (the flush below is the one): it would hold the folder's lock
        // a moment past the return.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(backend("import open"))?;
        let mut n = 0;
        loop {
            let mut len = [0u8; 1];
            match input.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io(e)),
            }
            let mut name = vec![0u8; len[0] as usize];
            input.read_exact(&mut name).map_err(io)?;
            let name = String::from_utf8(name).map_err(|e| corrupt(b"backup", e))?;
            let retired = RETIRED_TREES.contains(&name.as_str());
            if !retired && !TREES.contains(&name.as_str()) {
                return Err(corrupt(b"backup", format!("unknown tree {name}")));
            }
            let mut read_blob = || -> StoreResult<Vec<u8>> {
                let mut l = [0u8; 4];
                input.read_exact(&mut l).map_err(io)?;
                let mut b = vec![0u8; u32::from_be_bytes(l) as usize];
                input.read_exact(&mut b).map_err(io)?;
                Ok(b)
            };
            let k = read_blob()?;
            let v = read_blob()?;
            if retired {
                continue;
            }
            db.open_tree(&name)
                .map_err(backend("import"))?
                .insert(k, v)
                .map_err(backend("import"))?;
            n += 1;
        }
        db.flush().map_err(backend("import flush"))?;
        Ok(n)
    }
}
