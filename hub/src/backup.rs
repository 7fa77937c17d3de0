//! Online backup and offline restore of a hub's data folder.
//!
//! A backup is a tar archive: `manifest.json`, `store/records.bin` (every store record, see
//! [`crate::store::Store::export_records`]), `blobs/<sha256>` (uploaded file contents) and
//! `secrets/*` (JWT and worker-token keys, so sessions and worker tokens stay valid). It is
//! taken while the hub runs (`GET /api/admin/backup`, `cmdx backup`): everything acknowledged
//! before the backup started is in it. Restore (`cmdx restore`) writes a new data folder; the
//! hub rebuilds its queue from the job records when it starts on it.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::Hub;
use crate::blobs::Blobs;
use crate::error::{BackupError, HubError};
use crate::store::{SledStore, new_id, now_ms};

/// Format version written in `manifest.json`.
pub const FORMAT_VERSION: u32 = 1;

/// Writes a backup of the running hub to a temp file under the data folder and returns its
/// path (the caller streams it and deletes it).
pub async fn write_backup(hub: &Hub) -> Result<PathBuf, BackupError> {
    if hub.store.shared() {
        return Err(BackupError::SharedStore);
    }
    // Everything acknowledged so far is on disk and will be read below.
    hub.store.sync().await?;
    let dir = hub.config.data_dir.join("backup-tmp");
    crate::private::dir(&dir, crate::private::DIR_MODE)
        .map_err(|e| BackupError::Write(format!("{}: {e}", dir.display())))?;
    let id = new_id();
    let tar_path = dir.join(format!("{id}.tar"));
    let rec_path = dir.join(format!("{id}.records"));
    let store = hub.store.clone();
    let blobs = hub.blobs.clone();
    let secrets = hub.config.data_dir.join("secrets");
    let out = tar_path.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let records = {
            let f = crate::private::create_file(&rec_path).map_err(|e| e.to_string())?;
            let mut w = BufWriter::new(f);
            let n = store.export_records(&mut w).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
            n
        };
        let f = crate::private::create_file(&out).map_err(|e| e.to_string())?;
        let mut tar = tar::Builder::new(BufWriter::new(f));
        tar.follow_symlinks(false);
        let manifest = serde_json::json!({
            "format": "cmdx-backup",
            "version": FORMAT_VERSION,
            "createdMs": now_ms(),
            "records": records,
        });
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, "manifest.json", bytes.as_slice())
            .map_err(|e| e.to_string())?;
        tar.append_path_with_name(&rec_path, "store/records.bin")
            .map_err(|e| e.to_string())?;
        for sha in blobs.list_blocking().map_err(|e| e.to_string())? {
            let mut f = blobs.open_blocking(&sha).map_err(|e| e.to_string())?;
            tar.append_file(format!("blobs/{sha}"), &mut f)
                .map_err(|e| e.to_string())?;
        }
        for name in ["jwt.key", "worker.key"] {
            let p = secrets.join(name);
            if p.is_file() {
                tar.append_path_with_name(&p, format!("secrets/{name}"))
                    .map_err(|e| e.to_string())?;
            }
        }
        tar.into_inner()
            .map_err(|e| e.to_string())?
            .flush()
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&rec_path);
        Ok(records)
    })
    .await
    .map_err(|e| BackupError::Write(e.to_string()))?;
    match result {
        Ok(records) => {
            tracing::info!(records, path = %tar_path.display(), "backup written");
            Ok(tar_path)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tar_path).await;
            Err(BackupError::Write(e))
        }
    }
}

/// Restores a backup archive into `data_dir`, which must be empty or absent. Returns the number
/// of store records restored.
pub fn restore(archive: &Path, data_dir: &Path) -> Result<u64, HubError> {
    let cfg = |m: String| HubError::Config(m);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HubError::DataDir { path, source }
    };
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(io(data_dir))?
            .next()
            .is_some()
    {
        return Err(cfg(format!(
            "{} is not empty: restore into a new folder",
            data_dir.display()
        )));
    }
    use crate::private::{DATA_DIR_MODE, DIR_MODE};
    let secrets = data_dir.join("secrets");
    for (dir, mode) in [
        (data_dir.to_path_buf(), DATA_DIR_MODE),
        (secrets.clone(), DIR_MODE),
    ] {
        crate::private::dir(&dir, mode).map_err(io(&dir))?;
    }
    let blobs = Blobs::in_data_dir(data_dir);
    blobs.prepare().map_err(io(&data_dir.join("blobs")))?;
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(file);
    let mut records = None;
    let mut saw_manifest = false;
    for entry in tar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(io(archive))?
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            "manifest.json" => {
                let m: serde_json::Value = serde_json::from_reader(&mut entry)
                    .map_err(|e| cfg(format!("bad manifest: {e}")))?;
                if m["format"] != "cmdx-backup" || m["version"] != FORMAT_VERSION {
                    return Err(cfg(format!(
                        "not a cmdx backup of version {FORMAT_VERSION}"
                    )));
                }
                saw_manifest = true;
            }
            "store/records.bin" => {
                let n = SledStore::import_records(&data_dir.join("db"), &mut entry)?;
                records = Some(n);
            }
            other => {
                // Only plain names inside the two known folders: never a path that escapes.
                let (folder, leaf) = match other.split_once('/') {
                    Some((f, l)) if (f == "blobs" || f == "secrets") && !l.is_empty() => (f, l),
                    _ => continue,
                };
                if leaf.contains('/') || leaf.starts_with('.') {
                    continue;
                }
                let dest = data_dir.join(folder).join(leaf);
                if folder == "blobs" {
                    // Only blob names: anything else in the folder was never a blob.
                    if crate::blobs::is_sha256(leaf) {
                        blobs.put_blocking(leaf, &mut entry).map_err(io(&dest))?;
                    }
                    continue;
                }
                let mut out = crate::private::file_options()
                    .create_new(true)
                    .open(&dest)
                    .map_err(io(&dest))?;
                std::io::copy(&mut entry, &mut out).map_err(io(&dest))?;
                out.sync_all().map_err(io(&dest))?;
            }
        }
    }
    if !saw_manifest {
        return Err(cfg("archive has no cmdx manifest".into()));
    }
    records.ok_or_else(|| cfg("archive has no store records".into()))
}
