//! Authentication: user passwords (argon2id), user session JWTs (HS256 pinned, `exp/iss/aud/sub`
//! required), worker tokens (HMAC-SHA256 signed, with a token id and expiry, revocable), the
//! original system's legacy worker JWTs, and the CIDR allow-list for unauthenticated legacy
//! workers. Secrets are generated on first start into `DATA/secrets/` (mode 0600).

use std::net::IpAddr;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use warp::http::HeaderMap;

use crate::config::HubConfig;
use crate::error::{AuthError, HubError};
use crate::store::now_ms;

/// Issuer of session tokens.
pub const ISSUER: &str = "cmdx-hub";
/// Audience of session tokens.
pub const AUDIENCE: &str = "cmdx-api";
/// Name of the session cookie.
pub const COOKIE: &str = "auth_token";
/// Prefix of worker tokens (lets the hub tell them from JWTs without trying both).
pub const WORKER_TOKEN_PREFIX: &str = "cmdxw_";

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub user_id: String,
    /// Email.
    pub email: String,
    /// `admin` or `user`.
    pub role: String,
    /// The session's id (`jti`): logout revokes it. Empty for tokens issued before sessions had
    /// ids (they can only expire).
    pub session_id: String,
    /// When the session expires (seconds since the epoch).
    pub expires_s: u64,
    /// The user's session epoch when it was issued: an admin's change to the account
    /// (disabled, new password, other role, deleted) raises the user's epoch and ends every
    /// session issued before. 0 for tokens issued before epochs existed.
    pub epoch: u64,
}

impl Caller {
    /// Admins see everything.
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// Whether this caller may see a resource owned by `owner`.
    pub fn can_see(&self, owner: &str) -> bool {
        self.is_admin() || self.user_id == owner
    }
}

/// How a worker proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerCred {
    /// A minted worker token with this id.
    Token(String),
    /// The original system's worker JWT naming this worker id.
    LegacyJwt(String),
    /// An unauthenticated legacy worker from an allowed CIDR.
    OpenCidr,
}

impl WorkerCred {
    /// The id assignments are bound to (with the worker id). Both legacy credentials share one
    /// id: the original worker polls through an admitted CIDR and downloads with its JWT, as one
    /// worker. A JWT still speaks only for the worker id it names (see [`WorkerCred::speaks_for`]).
    pub fn token_id(&self) -> String {
        match self {
            WorkerCred::Token(t) => t.clone(),
            WorkerCred::LegacyJwt(_) | WorkerCred::OpenCidr => {
                crate::store::LEGACY_CREDENTIAL.to_string()
            }
        }
    }

    /// Whether this credential may speak for `worker_id`: a legacy JWT only for the worker it
    /// names; a minted token or an admitted CIDR for any (minted tokens enrol many workers).
    pub fn speaks_for(&self, worker_id: &str) -> bool {
        match self {
            WorkerCred::LegacyJwt(w) => w == worker_id,
            WorkerCred::Token(_) | WorkerCred::OpenCidr => true,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    email: String,
    role: String,
    iss: String,
    aud: String,
    exp: u64,
    iat: u64,
    #[serde(default)]
    jti: String,
    /// The user's session epoch at issue (absent in older tokens: 0).
    #[serde(default)]
    ep: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerPayload {
    tid: String,
    exp: u64,
}

#[derive(Debug, Deserialize)]
struct LegacyClaims {
    #[serde(rename = "workerId")]
    worker_id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// Keys and policies.
pub struct Auth {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    worker_key: Vec<u8>,
    legacy: Option<(DecodingKey, Validation)>,
    open_cidrs: Vec<IpNet>,
    proxies: Vec<IpNet>,
    dummy_hash: String,
    session_ttl_secs: u64,
    /// Verified session tokens (verifying a JWT costs ~50k instructions; a busy client sends
    /// the same token on every request). Bounded: cleared when full.
    sessions: std::sync::Mutex<std::collections::HashMap<String, (Caller, u64)>>,
    /// Revoked session ids (logout) with their expiry (seconds); loaded from the store at start.
    revoked: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Bumped on every revocation: open client sockets check whether theirs was revoked.
    revocations: tokio::sync::watch::Sender<u64>,
    /// Each user's current session epoch, where not 0 ([`Caller::epoch`]); `u64::MAX` for a
    /// deleted user. Loaded from the user records at start and kept current.
    epochs: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// The session epoch of a deleted user: every session of theirs is refused.
pub const DELETED_EPOCH: u64 = u64::MAX;

/// Most cached session verifications.
const SESSION_CACHE: usize = 10_000;

fn load_secret(dir: &Path, name: &str, given: &Option<String>) -> Result<Vec<u8>, HubError> {
    if let Some(s) = given {
        return Ok(s.as_bytes().to_vec());
    }
    let path = dir.join(name);
    let io = |source| HubError::DataDir {
        path: path.clone(),
        source,
    };
    if let Ok(hex_text) = std::fs::read_to_string(&path) {
        return hex::decode(hex_text.trim())
            .map_err(|e| HubError::Config(format!("secret {}: {e}", path.display())));
    }
    let bytes: [u8; 32] = rand::random();
    write_private(&path, hex::encode(bytes).as_bytes()).map_err(io)?;
    Ok(bytes.to_vec())
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = crate::private::create_file(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A network (`10.0.0.0/8`, `fd00::/8`) or one address (`10.1.2.3`, a full-length prefix).
fn parse_cidr(s: &str) -> Result<IpNet, HubError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| HubError::Config(format!("bad CIDR {s}")))
}

/// Whether `net` holds `ip`; an IPv4-mapped IPv6 address (a dual-stack socket's view of an
/// IPv4 peer) counts as its IPv4 address.
fn cidr_contains(net: &IpNet, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    net.contains(&ip)
}

impl Auth {
    /// Loads or generates the secrets and prepares keys.
    pub fn load(config: &HubConfig) -> Result<Auth, HubError> {
        Self::load_with(config, [None, None])
    }

    /// [`Auth::load`], with the session and worker-token keys a shared store holds (`[jwt,
    /// worker]`) used instead of the data folder's when the configuration gives none.
    pub fn load_with(config: &HubConfig, shared: [Option<Vec<u8>>; 2]) -> Result<Auth, HubError> {
        let dir = config.data_dir.join("secrets");
        crate::private::dir(&dir, crate::private::DIR_MODE).map_err(|source| {
            HubError::DataDir {
                path: dir.clone(),
                source,
            }
        })?;
        let [shared_jwt, shared_worker] = shared;
        let jwt = match (&config.jwt_secret, shared_jwt) {
            (None, Some(key)) => key,
            _ => load_secret(&dir, "jwt.key", &config.jwt_secret)?,
        };
        let worker_key = match (&config.worker_secret, shared_worker) {
            (None, Some(key)) => key,
            _ => load_secret(&dir, "worker.key", &config.worker_secret)?,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        let legacy = config.legacy_worker_jwt_secret.as_ref().map(|s| {
            let mut v = Validation::new(Algorithm::HS256);
            v.algorithms = vec![Algorithm::HS256];
            // The original system's worker JWTs carry no standard claims; exp is checked when
            // present.
            v.set_required_spec_claims::<&str>(&[]);
            v.validate_aud = false;
            (DecodingKey::from_secret(s.as_bytes()), v)
        });
        let mut open_cidrs = Vec::new();
        for c in &config.legacy_open_cidrs {
            open_cidrs.push(parse_cidr(c)?);
        }
        if !open_cidrs.is_empty() {
            tracing::warn!(
                cidrs = ?config.legacy_open_cidrs,
                "UNAUTHENTICATED legacy workers are admitted from these networks"
            );
        }
        let mut proxies = Vec::new();
        for c in &config.trusted_proxies {
            proxies.push(parse_cidr(c)?);
        }
        let dummy_hash = hash_password("cmdx-timing-equaliser")
            .map_err(|e| HubError::Config(format!("argon2: {e}")))?;
        Ok(Auth {
            enc: EncodingKey::from_secret(&jwt),
            dec: DecodingKey::from_secret(&jwt),
            validation,
            worker_key,
            legacy,
            open_cidrs,
            proxies,
            dummy_hash,
            session_ttl_secs: config.session_ttl_secs,
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            revoked: std::sync::Mutex::new(std::collections::HashMap::new()),
            revocations: tokio::sync::watch::Sender::new(0),
            epochs: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Issues a session token; returns it with its lifetime in seconds.
    pub fn issue_session(
        &self,
        user_id: &str,
        email: &str,
        role: &str,
        epoch: u64,
    ) -> (String, u64) {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: user_id.to_string(),
            email: email.to_string(),
            role: role.to_string(),
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
            exp: now + self.session_ttl_secs,
            iat: now,
            jti: crate::store::new_id(),
            ep: epoch,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .unwrap_or_default();
        (token, self.session_ttl_secs)
    }

    /// Verifies a session token.
    pub fn verify_session(&self, token: &str) -> Result<Caller, AuthError> {
        if token.starts_with(WORKER_TOKEN_PREFIX) {
            return Err(AuthError::WrongKind("worker tokens cannot call user apis"));
        }
        let now = now_ms() / 1000;
        if let Some((caller, exp)) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            && *exp > now
        {
            let caller = caller.clone();
            return self.not_revoked(caller);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|e| AuthError::Unauthorized(format!("invalid session token: {e}")))?;
        let caller = Caller {
            user_id: data.claims.sub,
            email: data.claims.email,
            role: data.claims.role,
            session_id: data.claims.jti,
            expires_s: data.claims.exp,
            epoch: data.claims.ep,
        };
        let caller = self.not_revoked(caller)?;
        let mut cache = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= SESSION_CACHE {
            cache.clear();
        }
        cache.insert(token.to_string(), (caller.clone(), data.claims.exp));
        Ok(caller)
    }

    fn not_revoked(&self, caller: Caller) -> Result<Caller, AuthError> {
        if self.is_revoked(&caller.session_id) {
            return Err(AuthError::Unauthorized(
                "this session was signed out; sign in again".into(),
            ));
        }
        if self.is_stale(&caller) {
            return Err(AuthError::Unauthorized(
                "an admin changed or disabled this account, which ended its sessions; sign in \
                 again"
                    .into(),
            ));
        }
        Ok(caller)
    }

    /// Whether `caller`'s session was issued before an admin's change to the account.
    fn is_stale(&self, caller: &Caller) -> bool {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&caller.user_id)
            .is_some_and(|e| caller.epoch < *e)
    }

    /// Whether `caller`'s session no longer holds: signed out, or ended by an admin's change.
    pub fn is_ended(&self, caller: &Caller) -> bool {
        self.is_revoked(&caller.session_id) || self.is_stale(caller)
    }

    /// Sets user `user_id`'s session epoch (raising it ends their older sessions, here and on
    /// their open sockets). Never lowers it.
    pub fn set_epoch(&self, user_id: &str, epoch: u64) {
        let raised = {
            let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            let e = epochs.entry(user_id.to_string()).or_insert(0);
            let raised = epoch > *e;
            *e = (*e).max(epoch);
            raised
        };
        if raised {
            self.revocations.send_modify(|n| *n += 1);
        }
    }

    /// Whether session `sid` was revoked (signed out).
    pub fn is_revoked(&self, sid: &str) -> bool {
        !sid.is_empty()
            && self
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(sid)
    }

    /// Revokes session `sid` (valid until `exp_s`): every later request with it answers 401,
    /// and client sockets opened with it close.
    pub fn revoke_session(&self, sid: &str, exp_s: u64) {
        if sid.is_empty() {
            return;
        }
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid.to_string(), exp_s);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (c, _)| c.session_id != sid);
        self.revocations.send_modify(|n| *n += 1);
    }

    /// Forgets revocations of sessions that have expired anyway (the janitor).
    pub fn forget_expired_revocations(&self, now_s: u64) {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, exp| *exp > now_s);
    }

    /// A receiver that changes on every revocation.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Mints a worker token with id `tid` expiring at `exp_ms`.
    pub fn mint_worker_token(&self, tid: &str, exp_ms: u64) -> String {
        let payload = serde_json::to_vec(&WorkerPayload {
            tid: tid.to_string(),
            exp: exp_ms / 1000,
        })
        .unwrap_or_default();
        let body = format!("{WORKER_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = self.sign(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.worker_key)
            .expect("hmac accepts any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a worker token's signature and expiry; returns its id. The caller also checks
    /// that the token was not revoked (its record exists).
    pub fn verify_worker_token(&self, token: &str) -> Result<String, AuthError> {
        let bad = || AuthError::Unauthorized("invalid worker token".into());
        let (body, sig) = token.rsplit_once('.').ok_or_else(bad)?;
        let payload_b64 = body.strip_prefix(WORKER_TOKEN_PREFIX).ok_or_else(bad)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| bad())?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.worker_key)
            .expect("hmac accepts any key length");
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).map_err(|_| bad())?;
        let payload: WorkerPayload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(bad)?;
        if payload.exp.saturating_mul(1000) <= now_ms() {
            return Err(AuthError::Unauthorized("worker token expired".into()));
        }
        Ok(payload.tid)
    }

    /// Verifies a legacy worker JWT; returns the worker id it names.
    pub fn verify_legacy_jwt(&self, token: &str) -> Result<String, AuthError> {
        let Some((key, validation)) = &self.legacy else {
            return Err(invalid_worker_token());
        };
        let data = jsonwebtoken::decode::<LegacyClaims>(token, key, validation)
            .map_err(|_| invalid_worker_token())?;
        if data.claims.kind != "worker" {
            return Err(invalid_worker_token());
        }
        Ok(data.claims.worker_id)
    }

    /// Whether an unauthenticated legacy worker from `ip` is admitted.
    pub fn open_cidr_allows(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            Some(ip) => self.open_cidrs.iter().any(|c| cidr_contains(c, ip)),
            None => false,
        }
    }

    /// Whether `ip` is a configured reverse proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|c| cidr_contains(c, ip))
    }

    /// The client's address: the peer, or behind trusted proxies the right-most
    /// `X-Forwarded-For` hop that is not a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.is_trusted_proxy(peer) {
            return Some(peer);
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|h| h.trim().parse().ok())
            .collect();
        Some(
            hops.into_iter()
                .rev()
                .find(|ip| !self.is_trusted_proxy(*ip))
                .unwrap_or(peer),
        )
    }

    /// Verifies a password against a stored hash; with `None` (unknown user) it still spends
    /// the same time so responses do not reveal which emails exist.
    pub fn verify_password(&self, hash: Option<&str>, password: &str) -> bool {
        let (hash, real) = match hash {
            Some(h) => (h, true),
            None => (self.dummy_hash.as_str(), false),
        };
        let ok = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && real
    }
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn invalid_worker_token() -> AuthError {
    AuthError::Unauthorized("invalid worker token".into())
}

/// Creates the first admin when the data folder has no users.
pub async fn bootstrap_admin(hub: &crate::Hub) -> Result<(), HubError> {
    if !hub.store.list_users().await?.is_empty() {
        return Ok(());
    }
    let env_email = std::env::var("CMDX_ADMIN_EMAIL")
        .ok()
        .filter(|s| !s.is_empty());
    let env_pw = std::env::var("CMDX_ADMIN_PASSWORD")
        .ok()
        .filter(|s| !s.is_empty());
    let (email, password, generated) = match (env_email, env_pw) {
        (Some(e), Some(p)) => (e, p, false),
        (e, _) => {
            let pw: [u8; 12] = rand::random();
            (
                e.unwrap_or_else(|| "admin@cmdx.local".to_string()),
                hex::encode(pw),
                true,
            )
        }
    };
    let hash = hash_password(&password).map_err(HubError::Config)?;
    let user = crate::store::UserRecord {
        v: 1,
        id: crate::store::new_id(),
        email: email.to_lowercase(),
        password_hash: hash,
        role: "admin".into(),
        created_ms: now_ms(),
        max_queued: None,
        max_running: None,
        disabled: false,
        session_epoch: 0,
    };
    match hub.store.insert_user(&user).await {
        // Another hub on the same database made the first admin a moment before.
        Err(crate::store::StoreError::Conflict(_)) => return Ok(()),
        r => r?,
    }
    hub.store.sync().await?;
    if generated {
        let path = hub.config.data_dir.join("admin-credentials");
        let text = format!("email: {}\npassword: {password}\n", user.email);
        write_private(&path, text.as_bytes()).map_err(|source| HubError::DataDir {
            path: path.clone(),
            source,
        })?;
        eprintln!(
            "cmdx: created admin {} with password {password} (saved to {})",
            user.email,
            path.display()
        );
    }
    tracing::info!(email = %user.email, "bootstrap admin created");
    Ok(())
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The value of a cookie, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_prefixes() {
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(cidr_contains(&net, "10.1.200.3".parse().unwrap()));
        assert!(!cidr_contains(&net, "10.2.0.1".parse().unwrap()));
        assert!(cidr_contains(
            &parse_cidr("127.0.0.1").unwrap(),
            "::ffff:127.0.0.1".parse().unwrap()
        ));
        assert!(!cidr_contains(
            &parse_cidr("127.0.0.2").unwrap(),
            "127.0.0.1".parse().unwrap()
        ));
        let v6 = parse_cidr("fd00::/8").unwrap();
        assert!(cidr_contains(&v6, "fd12::1".parse().unwrap()));
        assert!(!cidr_contains(&v6, "10.0.0.1".parse().unwrap()));
        assert!(cidr_contains(
            &parse_cidr("0.0.0.0/0").unwrap(),
            "203.0.113.9".parse().unwrap()
        ));
        // Host bits past the prefix are ignored, as before.
        assert!(cidr_contains(
            &parse_cidr("10.1.2.3/16").unwrap(),
            "10.1.9.9".parse().unwrap()
        ));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "host", "10.0.0/8"] {
            assert!(parse_cidr(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn worker_tokens_round_trip_and_reject_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HubConfig {
            data_dir: dir.path().to_path_buf(),
            ..HubConfig::default()
        };
        let auth = Auth::load(&cfg).unwrap();
        let tok = auth.mint_worker_token("t1", now_ms() + 60_000);
        assert_eq!(auth.verify_worker_token(&tok).unwrap(), "t1");
        let mut forged = tok.clone();
        forged.insert(10, 'A');
        assert!(auth.verify_worker_token(&forged).is_err());
        let expired = auth.mint_worker_token("t2", now_ms() - 1000);
        assert!(auth.verify_worker_token(&expired).is_err());
        assert!(auth.verify_session(&tok).is_err());
    }

    #[test]
    fn a_signed_worker_token_with_a_huge_expiry_does_not_overflow() {
        // Found by the `tokens` fuzz target: `exp * 1000` overflowed (a panic in debug builds).
        let dir = tempfile::tempdir().unwrap();
        let cfg = HubConfig {
            data_dir: dir.path().to_path_buf(),
            ..HubConfig::default()
        };
        let auth = Auth::load(&cfg).unwrap();
        let body = format!(
            "{WORKER_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(br#"{"tid":"t","exp":18446744073709551615}"#)
        );
        let token = format!(
            "{body}.{}",
            URL_SAFE_NO_PAD.encode(auth.sign(body.as_bytes()))
        );
        assert_eq!(auth.verify_worker_token(&token).unwrap(), "t");
    }
}
