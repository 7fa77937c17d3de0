//! Uploaded file contents, by sha256: [`Blobs`] is the one way to them. Records (files, jobs'
//! artifacts) only name a blob by its sha256; every write, read, listing and removal of the
//! contents goes through here, so that a shared backend (several hubs) can sit behind the same
//! methods. The folder `DATA/blobs/<sha256>` holds them, with uploads spooled in
//! `DATA/blobs/tmp/` until their sha256 is known. With a store several hubs share
//! (PostgreSQL), the store holds every blob and the folder is this hub's cache of it: a commit
//! writes the blob to the store before it returns, and a blob another hub stored is fetched
//! into the folder on first use.
//!
//! A blob is written once under its own hash and never changed; two files with the same content
//! share it (the janitor removes it when no file record names it any more).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::private;

/// The blob store of one data folder, and of the shared store behind it if any.
#[derive(Clone)]
pub struct Blobs {
    dir: PathBuf,
    /// The store every hub of a cluster reads blobs from (the folder is then a cache).
    shared: Option<Arc<dyn crate::store::Store>>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("dir", &self.dir)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

fn store_error(e: crate::store::StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Blobs {
    /// The blobs of the data folder `data_dir` (nothing is touched until used).
    pub fn in_data_dir(data_dir: &Path) -> Blobs {
        Blobs {
            dir: data_dir.join("blobs"),
            shared: None,
        }
    }

    /// Keeps blobs in `store` too when several hubs share it (the folder becomes a cache).
    pub fn shared_through(mut self, store: Arc<dyn crate::store::Store>) -> Blobs {
        if store.shared() {
            self.shared = Some(store);
        }
        self
    }

    /// Makes blob `sha256` present in the folder, fetching it from the shared store when
    /// another hub stored it; `NotFound` when nobody has it.
    pub async fn fetch(&self, sha256: &str) -> io::Result<()> {
        let path = self.path(sha256)?;
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(());
        }
        let Some(store) = &self.shared else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such blob"));
        };
        let tmp = self.dir.join("tmp").join(crate::store::new_id());
        match store.get_blob(sha256, &tmp).await {
            Ok(true) => tokio::fs::rename(&tmp, &path).await,
            Ok(false) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(io::Error::new(io::ErrorKind::NotFound, "no such blob"))
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(store_error(e))
            }
        }
    }

    /// Creates the folders (private modes, whatever the umask).
    pub fn prepare(&self) -> io::Result<()> {
        private::dir(&self.dir, private::DIR_MODE)?;
        private::dir(&self.dir.join("tmp"), private::DIR_MODE)
    }

    /// A new upload, written to a private temp file while it is hashed; [`Blobs::commit`] files
    /// it under its hash.
    pub async fn spool(&self) -> io::Result<Spool> {
        let path = self.dir.join("tmp").join(crate::store::new_id());
        let file = private::create_file_async(&path).await?;
        Ok(Spool {
            path,
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Makes a spooled upload durable under its sha256; returns (sha256, size). Content already
    /// stored is not written twice.
    pub async fn commit(&self, mut spool: Spool) -> io::Result<(String, u64)> {
        spool.flush().await?;
        let sha = hex::encode(spool.hasher.finalize_reset());
        let dest = self.dir.join(&sha);
        if tokio::fs::metadata(&dest).await.is_ok() {
            let _ = tokio::fs::remove_file(&spool.path).await;
        } else {
            tokio::fs::rename(&spool.path, &dest).await?;
        }
        if let Some(store) = &self.shared {
            store.put_blob(&sha, &dest).await.map_err(store_error)?;
        }
        Ok((sha, spool.size))
    }

    /// Opens a blob for reading (fetched from the shared store first if another hub stored it).
    pub async fn open(&self, sha256: &str) -> io::Result<tokio::fs::File> {
        if self.shared.is_some() {
            self.fetch(sha256).await?;
        }
        tokio::fs::File::open(self.path(sha256)?).await
    }

    /// Opens a blob for reading, blocking (for readers that need `std::io::Seek`, like ZIP);
    /// with a shared store, [`Blobs::fetch`] it first.
    pub fn open_blocking(&self, sha256: &str) -> io::Result<std::fs::File> {
        std::fs::File::open(self.path(sha256)?)
    }

    /// Removes a blob; returns the bytes freed (0 when it was not there).
    pub async fn remove(&self, sha256: &str) -> io::Result<u64> {
        let path = self.path(sha256)?;
        let shared = match &self.shared {
            Some(store) => store.delete_blob(sha256).await.map_err(store_error)?,
            None => 0,
        };
        let Ok(meta) = tokio::fs::metadata(&path).await else {
            return Ok(shared);
        };
        tokio::fs::remove_file(&path).await?;
        Ok(meta.len().max(shared))
    }

    /// Every stored blob's sha256, blocking (backup).
    pub fn list_blocking(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_file()) && is_sha256(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Stores `content` as blob `sha256`, blocking (restore: the name comes from the archive,
    /// which was written from [`Blobs::list_blocking`]). Refuses to overwrite.
    pub fn put_blocking(&self, sha256: &str, content: &mut impl io::Read) -> io::Result<()> {
        let path = self.path(sha256)?;
        let mut out = private::file_options().create_new(true).open(&path)?;
        io::copy(content, &mut out)?;
        out.sync_all()
    }

    fn path(&self, sha256: &str) -> io::Result<PathBuf> {
        if !is_sha256(sha256) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a blob name: {sha256:?}"),
            ));
        }
        Ok(self.dir.join(sha256))
    }
}

/// A sha256 in lowercase hex: the only names blobs have (so no name can leave the folder).
pub fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An upload being written: a private temp file, hashed and counted as it grows.
pub struct Spool {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

impl Spool {
    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.size += data.len() as u64;
        self.hasher.update(data);
        self.file.write_all(data).await
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes everything written durable in the temp file.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.file.sync_all().await
    }

    /// The temp file, for inspection before commit (complete once [`Spool::flush`] returned).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the upload.
    pub async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_committed_upload_is_read_listed_and_removed_by_its_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::in_data_dir(dir.path());
        blobs.prepare().expect("prepare");
        let mut spool = blobs.spool().await.expect("spool");
        spool.write(b"hello ").await.expect("write");
        spool.write(b"world").await.expect("write");
        assert_eq!(spool.size(), 11);
        let (sha, size) = blobs.commit(spool).await.expect("commit");
        assert_eq!(size, 11);
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        // The same content again shares the blob.
        let mut again = blobs.spool().await.expect("spool");
        again.write(b"hello world").await.expect("write");
        assert_eq!(blobs.commit(again).await.expect("commit").0, sha);
        assert_eq!(blobs.list_blocking().expect("list"), vec![sha.clone()]);
        let mut text = String::new();
        io::Read::read_to_string(&mut blobs.open_blocking(&sha).expect("open"), &mut text)
            .expect("read");
        assert_eq!(text, "hello world");
        assert_eq!(blobs.remove(&sha).await.expect("remove"), 11);
        assert_eq!(blobs.remove(&sha).await.expect("remove again"), 0);
        assert!(blobs.list_blocking().expect("list").is_empty());
        assert!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .expect("tmp")
                .next()
                .is_none()
        );
    }

    #[test]
    fn only_hashes_name_blobs() {
        let blobs = Blobs::in_data_dir(Path::new("/nonexistent"));
        for bad in ["../secrets/jwt.key", "tmp", "", &"A".repeat(64)] {
            let err = blobs.open_blocking(bad).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
