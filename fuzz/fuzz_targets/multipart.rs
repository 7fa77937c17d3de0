//! Multipart upload parsing: arbitrary bodies through `multer` exactly as the hub's
//! `POST /api/files/upload` reads them (`hub/src/api/files.rs`, `receive_multipart`): one
//! `file` field streamed and counted against the upload cap, at most 32 text fields of at most
//! 256 KiB. The first byte picks the chunk size the body arrives in (as a network would split
//! it). Nothing may panic, and the bytes accepted never exceed the caps.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const BOUNDARY: &str = "cmdxfuzzboundary";
const MAX_UPLOAD: u64 = 64 << 10;
const MAX_TEXT: usize = 256 * 1024;
const MAX_FIELDS: usize = 32;

/// What the hub's loop decides for one body.
#[derive(Debug)]
enum Outcome {
    /// Accepted: file bytes, text fields.
    Accepted(u64, usize),
    /// Refused (400 or 413 in the hub).
    Refused,
}

async fn receive(body: Vec<Bytes>) -> Outcome {
    let stream = futures_util::stream::iter(body.into_iter().map(Ok::<_, std::io::Error>));
    let mut mp = multer::Multipart::new(stream, BOUNDARY);
    let mut name = None;
    let mut size = 0u64;
    let mut fields = 0usize;
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return Outcome::Refused,
        };
        if field.name() != Some("file") {
            let mut text = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if text.len() + chunk.len() > MAX_TEXT || fields >= MAX_FIELDS {
                            return Outcome::Refused;
                        }
                        text.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(_) => return Outcome::Refused,
                }
            }
            fields += 1;
            continue;
        }
        if name.is_some() {
            return Outcome::Refused;
        }
        name = Some(field.file_name().unwrap_or("upload.zip").to_string());
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    if size > MAX_UPLOAD {
                        return Outcome::Refused;
                    }
                }
                Ok(None) => break,
                Err(_) => return Outcome::Refused,
            }
        }
    }
    match name {
        Some(_) => Outcome::Accepted(size, fields),
        None => Outcome::Refused,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let body: Vec<Bytes> = rest.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    if let Outcome::Accepted(size, fields) = rt.block_on(receive(body)) {
        assert!(size <= MAX_UPLOAD && fields <= MAX_FIELDS);
        assert!(size <= rest.len() as u64);
    }
});
