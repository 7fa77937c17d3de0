//! Hub paths that travel inside data: a job's `fileUrl`, an assignment's download URL and an
//! upload's answer all name a file by [`download_path`], and a submission naming a file by URL is
//! read back with [`file_id_from_url`].

/// Where a file's contents are downloaded: `/api/files/download/{id}` (relative to the hub).
pub fn download_path(file_id: &str) -> String {
    format!("{DOWNLOAD_PREFIX}{file_id}")
}

/// The file id in a hub file URL (absolute or relative, with or without a query).
pub fn file_id_from_url(url: &str) -> Option<String> {
    let path = url.split(DOWNLOAD_PREFIX).nth(1)?;
    let id = path.split(['?', '#', '/']).next()?;
    (!id.is_empty()).then(|| id.to_string())
}

const DOWNLOAD_PREFIX: &str = "/api/files/download/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_path_reads_back_as_its_id() {
        assert_eq!(download_path("f1"), "/api/files/download/f1");
        assert_eq!(
            file_id_from_url(&download_path("f1")).as_deref(),
            Some("f1")
        );
        assert_eq!(
            file_id_from_url("http://hub:8080/api/files/download/f2?workerId=w").as_deref(),
            Some("f2")
        );
        assert_eq!(file_id_from_url("/api/files/download/"), None);
        assert_eq!(file_id_from_url("/elsewhere/f3"), None);
    }
}
