//! Entry points for the fuzz targets in `fuzz/` (not part of the agent's API).
//!
//! The extractor is crate-private; this module exposes it with plain types so a fuzz target
//! can feed it arbitrary archives and check its invariants (nothing written outside the
//! destination, bytes bounded).

use std::path::Path;

use crate::extract::{ExtractLimits, extract_zip};

/// Caps for [`extract_zip_for_fuzzing`], mirroring the agent's extraction limits.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct FuzzExtractLimits {
    /// Most entries (files and directories).
    pub max_entries: usize,
    /// Most decompressed bytes in total.
    pub max_bytes: u64,
    /// Largest decompressed/compressed ratio.
    pub max_ratio: u64,
    /// Ratio checks apply only above this many decompressed bytes.
    pub ratio_floor: u64,
}

/// Extracts the ZIP at `zip_path` into `dest` (an existing, empty directory) with the agent's
/// extractor; returns (files written, bytes written) or the error text.
#[doc(hidden)]
pub fn extract_zip_for_fuzzing(
    zip_path: &Path,
    dest: &Path,
    limits: FuzzExtractLimits,
) -> Result<(usize, u64), String> {
    let limits = ExtractLimits {
        max_entries: limits.max_entries,
        max_bytes: limits.max_bytes,
        max_ratio: limits.max_ratio,
        ratio_floor: limits.ratio_floor,
    };
    extract_zip(zip_path, dest, limits, None)
        .map(|done| (done.files, done.bytes))
        .map_err(|e| e.to_string())
}
