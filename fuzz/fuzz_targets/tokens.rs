//! Token parsing: worker tokens, session JWTs, legacy worker JWTs, and the `Authorization` and
//! `Cookie` header parsers. The first byte picks the parser; modes 5..=7 sign the fuzz input
//! with the hub's own key first, so the payload decoding behind a valid signature is reached
//! too. Nothing may panic; an unsigned input never verifies.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cmdx_hub::HubConfig;
use cmdx_hub::auth::{Auth, WORKER_TOKEN_PREFIX, bearer, cookie};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const JWT_SECRET: &str = "fuzz-jwt-secret";
const WORKER_SECRET: &str = "fuzz-worker-secret";
const LEGACY_SECRET: &str = "fuzz-legacy-secret";

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let config = HubConfig {
            data_dir: dir,
            jwt_secret: Some(JWT_SECRET.into()),
            worker_secret: Some(WORKER_SECRET.into()),
            legacy_worker_jwt_secret: Some(LEGACY_SECRET.into()),
            ..HubConfig::default()
        };
        Auth::load(&config).expect("auth loads")
    })
}

fn mac(key: &str, data: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("any key length");
    m.update(data);
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

fn signed_jwt(key: &str, claims: &[u8]) -> String {
    let body = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = mac(key, body.as_bytes());
    format!("{body}.{sig}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let auth = auth();
    let text = String::from_utf8_lossy(rest);
    match mode % 8 {
        0 => assert!(
            auth.verify_worker_token(&text).is_err(),
            "unsigned worker token verified"
        ),
        1 => assert!(
            auth.verify_session(&text).is_err(),
            "unsigned session verified"
        ),
        2 => assert!(
            auth.verify_legacy_jwt(&text).is_err(),
            "unsigned legacy jwt verified"
        ),
        3 | 4 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else {
                return;
            };
            let mut headers = HeaderMap::new();
            let name = if mode % 8 == 3 {
                "authorization"
            } else {
                "cookie"
            };
            headers.insert(name, value);
            if let Some(t) = bearer(&headers) {
                assert!(!t.is_empty() && t.trim() == t);
            }
            if let Some(v) = cookie(&headers, "auth_token") {
                assert!(!v.contains(';'));
            }
        }
        5 => {
            let body = format!("{WORKER_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(rest));
            let token = format!("{body}.{}", mac(WORKER_SECRET, body.as_bytes()));
            let _ = auth.verify_worker_token(&token);
        }
        6 => {
            let _ = auth.verify_session(&signed_jwt(JWT_SECRET, rest));
        }
        _ => {
            let _ = auth.verify_legacy_jwt(&signed_jwt(LEGACY_SECRET, rest));
        }
    }
});
