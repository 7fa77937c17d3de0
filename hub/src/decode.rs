//! Decoding of request paths and query strings, through `percent-encoding` and
//! `form_urlencoded`. Total: any input decodes to some string, never a panic (decoding is
//! byte-wise; invalid UTF-8 after decoding becomes U+FFFD). Fuzzed by
//! `fuzz/fuzz_targets/request_decode.rs`.

/// The value of the first `name` parameter of a raw query string (`application/x-www-form-urlencoded`:
/// `+` is a space, `%XX` a byte), `None` when absent; `a` alone gives `Some("")`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A percent-decoded path segment or path (`+` stays a plus; a `%` not followed by two hex digits
/// stays as it is).
pub fn path(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_clients_send() {
        assert_eq!(path("a%20b+c"), "a b+c");
        assert_eq!(path("%e2%82%ac"), "€");
        assert_eq!(path("100%"), "100%");
        assert_eq!(path("%zz%4"), "%zz%4");
        assert_eq!(
            query_param("jobId=a%2Fb&x=1", "jobId").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_param("q=a+b", "q").as_deref(), Some("a b"));
        assert_eq!(query_param("flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("x=1", "jobId"), None);
    }

    /// The input that panicked the old decoder: a `%` followed by a multi-byte character, so the
    /// two "hex digits" cut a UTF-8 sequence in half.
    #[test]
    fn a_percent_before_a_multibyte_character_is_kept_as_is() {
        assert_eq!(path("%a\u{e9}"), "%a\u{e9}");
        assert_eq!(path("x/%\u{e9}z"), "x/%\u{e9}z");
        assert_eq!(
            query_param("jobId=%a\u{e9}", "jobId").as_deref(),
            Some("%a\u{e9}")
        );
    }

    proptest! {
        #[test]
        fn any_input_decodes_without_panicking(s in any::<String>(), name in "[a-zA-Z]{0,4}") {
            let _ = path(&s);
            let _ = query_param(&s, &name);
        }

        #[test]
        fn encoded_bytes_decode_back(s in any::<String>()) {
            let encoded: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(path(&encoded), s.clone());
            let q = format!("v={encoded}");
            prop_assert_eq!(query_param(&q, "v"), Some(s));
        }
    }
}
