//! Job images: pulled once per agent, unpacked safely into a content-addressed cache, and
//! used as the job's read-only root.
//!
//! # Cache (`work_dir/images/`, mode 0700)
//! - `roots/<config digest hex>/`: one image's merged tree, its layers applied in order by
//!   `unpack` (whiteouts and opaque directories honoured). Named by the config's digest, which
//!   fixes every layer's `diff_id`: the same image pulled through another tag or registry is
//!   the same directory;
//! - `index.json`: which reference resolved to which image, and each image's size, entry
//!   count, manifest digest, `Env`, `WorkingDir` and last use (written whole, then renamed);
//! - `staging/`: layers being downloaded and trees being unpacked (cleared at start).
//!
//! A reference found in the index is used as it is, without asking the registry (Kubernetes'
//! `IfNotPresent`): a cached image starts a job with no network traffic at all. Pin a digest
//! (`@sha256:`) for an exact image; evicting an image makes the next job pull it again.
//!
//! # Why a merged read-only tree rather than overlayfs
//! The job's root is the sandbox's private root: a template mount namespace per image that
//! binds the tree's top-level entries read-only (`nosuid,nodev`), plus the job's own
//! `/workspace`, `/tmp`, `/dev/shm` (on its size-capped workspace tmpfs), `/proc` and `/dev`.
//! Jobs only ever write to those, as with the host's root, so an overlayfs upper per job would
//! buy nothing but one more mount per start; and one tree per image keeps a job's start at
//! the cost of a host-root job (the template is built once per image). The price is disk:
//! two images sharing base layers store them twice.
//!
//! # Pulls
//! One pull per reference at a time: concurrent jobs wanting the same image wait for the same
//! pull and all show its progress lines. A pull that fails reports an [`ImageError`] (the job
//! fails with failure kind `image`); the agent keeps serving. Images no job uses are evicted
//! least recently used first once the cache exceeds its budget.

mod registry;
pub(crate) mod unpack;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmdx_proto::image::ImageRef;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub(crate) use self::unpack::UnpackLimits;

/// Credentials for one registry, from the agent's configuration (never from a job).
#[derive(Clone)]
pub struct RegistryCredential {
    /// Registry host as images name it (`registry.example.com`, `127.0.0.1:5000`).
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret: only the registry and user reach a log.
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Reads credentials in Docker's `config.json` form: `{"auths": {"REGISTRY": {"auth":
/// base64("user:password")}}}` (or `username` and `password` fields).
pub fn read_credentials(path: &Path) -> Result<Vec<RegistryCredential>, String> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (registry, e) in file.auths {
        let registry = registry
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let (username, password) = match (e.auth, e.username, e.password) {
            (_, Some(u), Some(p)) => (u, p),
            (Some(a), ..) => {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|_| format!("{}: auth of {registry} is not base64", path.display()))?;
                let s = String::from_utf8(raw)
                    .map_err(|_| format!("{}: auth of {registry} is not UTF-8", path.display()))?;
                let (u, p) = s.split_once(':').ok_or_else(|| {
                    format!(
                        "{}: auth of {registry} is not user:password",
                        path.display()
                    )
                })?;
                (u.to_owned(), p.to_owned())
            }
            _ => return Err(format!("{}: {registry} has no credentials", path.display())),
        };
        out.push(RegistryCredential {
            registry,
            username,
            password,
        });
    }
    Ok(out)
}

/// The agent's image settings.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// Disk budget of the cache in bytes (unpacked trees); least recently used images that no
    /// job uses are evicted beyond it.
    pub cache_bytes: u64,
    /// Largest image accepted: compressed bytes downloaded.
    pub max_download_bytes: u64,
    /// Largest image accepted: unpacked file bytes and entries.
    pub max_unpacked_bytes: u64,
    /// Most entries (files, directories, links) of one image.
    pub max_entries: u64,
    /// Registries reached over plain HTTP besides loopback ones (`host:port`).
    pub insecure_registries: Vec<String>,
    /// Credentials per registry.
    pub credentials: Vec<RegistryCredential>,
    /// Longest time one pull may take.
    pub pull_timeout: Duration,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            cache_bytes: 10 << 30,
            max_download_bytes: 2 << 30,
            max_unpacked_bytes: 4 << 30,
            max_entries: 500_000,
            insecure_registries: Vec::new(),
            credentials: Vec::new(),
            pull_timeout: Duration::from_secs(900),
        }
    }
}

/// Why a job's image could not be used (the job fails with failure kind `image`).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference: {0}")]
    Reference(String),
    /// The registry has no such image (or tag).
    #[error("{0}")]
    NotFound(String),
    /// The registry cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The registry refused the credentials or access.
    #[error("{0}")]
    Auth(String),
    /// A manifest, config or layer does not match its digest.
    #[error("digest mismatch: {0}")]
    Digest(String),
    /// The image is over a size cap.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// Another registry failure.
    #[error("pull failed: {0}")]
    Registry(String),
    /// The image cannot run here (platform, no shell, bad layer).
    #[error("unusable image: {0}")]
    Unusable(String),
    /// The agent's own disk failed.
    #[error("image cache: {0}")]
    Local(String),
    /// The pull took longer than allowed.
    #[error("pull timed out after {0} s")]
    Timeout(u64),
}

/// One cached image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageEntry {
    /// `sha256:…` of the manifest pulled.
    manifest_digest: String,
    /// Bytes of the unpacked tree.
    bytes: u64,
    /// Entries of the unpacked tree.
    entries: u64,
    /// The image's `Env`.
    #[serde(default)]
    env: Vec<String>,
    /// The image's `WorkingDir`.
    #[serde(default)]
    working_dir: Option<String>,
    /// Milliseconds since the epoch of the last job that used it.
    last_used_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Canonical reference -> image id (config digest hex).
    refs: HashMap<String, String>,
    /// Image id -> what is known of it.
    images: HashMap<String, ImageEntry>,
}

type PullResult = Option<Result<(), ImageError>>;

/// A pull in progress: its lines so far and, at the end, its result.
struct Inflight {
    lines: Mutex<Vec<String>>,
    state: watch::Sender<(usize, PullResult)>,
}

struct State {
    index: Index,
    inflight: HashMap<String, Arc<Inflight>>,
    in_use: HashMap<String, u32>,
}

struct Inner {
    dir: PathBuf,
    settings: ImageSettings,
    state: Mutex<State>,
}

/// The agent's image cache and puller; cheap to clone.
#[derive(Clone)]
pub(crate) struct Images {
    inner: Arc<Inner>,
}

/// A job's hold on a cached image: the image is not evicted while it lives.
pub(crate) struct Lease {
    images: Images,
    id: String,
    /// The unpacked tree.
    pub root: PathBuf,
    /// Manifest digest.
    pub digest: String,
    /// The image's `Env`.
    pub env: Vec<String>,
    /// The image's `WorkingDir`, when it names a directory of the image.
    pub working_dir: Option<String>,
    /// Time spent pulling for this job (zero when cached).
    pub pulled_for: Duration,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.images.lock();
        if let Some(n) = st.in_use.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                st.in_use.remove(&self.id);
            }
        }
        if let Some(e) = st.index.images.get_mut(&self.id) {
            e.last_used_ms = now_ms();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn local(op: &str, path: &Path, e: io::Error) -> ImageError {
    ImageError::Local(format!("cannot {op} {}: {e}", path.display()))
}

impl Images {
    /// Opens (creating) the cache under `work_dir/images`, dropping anything half-made.
    pub(crate) fn open(work_dir: &Path, settings: ImageSettings) -> io::Result<Images> {
        let dir = work_dir.join("images");
        for d in [dir.clone(), dir.join("roots"), dir.join("staging")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)?;
        }
        let staging = dir.join("staging");
        for e in fs::read_dir(&staging)?.flatten() {
            let _ = remove_tree(&e.path());
        }
        let mut index: Index = fs::read(dir.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Only what is on disk counts; trees the index does not know are removed.
        index
            .images
            .retain(|id, _| dir.join("roots").join(id).is_dir());
        let known = index.images.keys().cloned().collect::<Vec<_>>();
        index.refs.retain(|_, id| known.contains(id));
        for e in fs::read_dir(dir.join("roots"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !index.images.contains_key(&name) {
                let _ = remove_tree(&e.path());
            }
        }
        let images = Images {
            inner: Arc::new(Inner {
                dir,
                settings,
                state: Mutex::new(State {
                    index,
                    inflight: HashMap::new(),
                    in_use: HashMap::new(),
                }),
            }),
        };
        // A budget lowered since the last run applies at once.
        images.evict();
        images.publish_metrics();
        Ok(images)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image `reference` names, pulled first when it is not cached; `progress` gets the
    /// pull's lines (each job waiting for the same pull gets them all).
    pub(crate) async fn acquire<F, Fut>(
        &self,
        reference: &str,
        mut progress: F,
    ) -> Result<Lease, ImageError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let image = ImageRef::parse(reference).map_err(ImageError::Reference)?;
        let key = image.canonical();
        let started = Instant::now();
        let mut pulled = false;
        loop {
            let inflight = {
                let mut st = self.lock();
                if let Some(lease) = self.lease_locked(&mut st, &key) {
                    drop(st);
                    let mut lease = lease;
                    if pulled {
                        lease.pulled_for = started.elapsed();
                    }
                    return Ok(lease);
                }
                match st.inflight.get(&key) {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(Inflight {
                            lines: Mutex::new(Vec::new()),
                            state: watch::channel((0, None)).0,
                        });
                        st.inflight.insert(key.clone(), f.clone());
                        let (me, image, f2) = (self.clone(), image.clone(), f.clone());
                        let pull = tokio::spawn(async move { me.pull(image, f2).await });
                        // A pull that panics still ends every wait for it.
                        let (me, key, f2) = (self.clone(), key.clone(), f.clone());
                        tokio::spawn(async move {
                            if pull.await.is_err() {
                                me.lock().inflight.remove(&key);
                                f2.state.send_modify(|s| {
                                    s.1 = Some(Err(ImageError::Local(
                                        "the pull stopped unexpectedly".into(),
                                    )));
                                });
                            }
                        });
                        f
                    }
                }
            };
            pulled = true;
            let mut rx = inflight.state.subscribe();
            let mut seen = 0;
            let result = loop {
                let (count, result) = rx.borrow_and_update().clone();
                if count > seen {
                    let new: Vec<String> = inflight.lines.lock().unwrap_or_else(|e| e.into_inner())
                        [seen..count]
                        .to_vec();
                    seen = count;
                    for l in new {
                        progress(l).await;
                    }
                }
                if let Some(r) = result {
                    break r;
                }
                if rx.changed().await.is_err() {
                    break Err(ImageError::Local("the pull task ended".into()));
                }
            };
            result?;
        }
    }

    fn lease_locked(&self, st: &mut State, key: &str) -> Option<Lease> {
        let id = st.index.refs.get(key)?.clone();
        let entry = st.index.images.get_mut(&id)?;
        entry.last_used_ms = now_ms();
        let (digest, env, wd) = (
            entry.manifest_digest.clone(),
            entry.env.clone(),
            entry.working_dir.clone(),
        );
        *st.in_use.entry(id.clone()).or_default() += 1;
        Some(Lease {
            images: self.clone(),
            root: self.inner.dir.join("roots").join(&id),
            id,
            digest,
            env,
            working_dir: wd,
            pulled_for: Duration::ZERO,
        })
    }

    /// The pull task: reports lines and the result on `f`, records the image on success.
    async fn pull(self, image: ImageRef, f: Arc<Inflight>) {
        let say = |line: String| {
            let n = {
                let mut l = f.lines.lock().unwrap_or_else(|e| e.into_inner());
                l.push(line);
                l.len()
            };
            f.state.send_modify(|s| s.0 = n);
        };
        let timeout = self.inner.settings.pull_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.fetch(&image, &say)).await {
            Ok(r) => r,
            Err(_) => Err(ImageError::Timeout(timeout.as_secs())),
        };
        let label = match &result {
            Ok(_) => "pulled",
            Err(_) => "failed",
        };
        metrics::counter!(crate::telemetry::IMAGE_PULLS_TOTAL, "result" => label).increment(1);
        metrics::histogram!(crate::telemetry::IMAGE_PULL_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let mut pulled = None;
        let result = result.map(|(id, entry)| {
            let mut st = self.lock();
            st.index.refs.insert(image.canonical(), id.clone());
            st.index.images.insert(id.clone(), entry);
            self.save(&st);
            pulled = Some(id);
        });
        if let Err(e) = &result {
            tracing::warn!(image = %image, error = %e, "image pull failed");
        }
        self.lock().inflight.remove(&image.canonical());
        f.state.send_modify(|s| s.1 = Some(result));
        // The image just pulled stays (its jobs have not leased it yet), even over the budget.
        self.evict_except(pulled.as_deref());
        self.publish_metrics();
    }

    /// Downloads and unpacks `image`; returns its id and entry.
    async fn fetch(
        &self,
        image: &ImageRef,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(String, ImageEntry), ImageError> {
        let s = &self.inner.settings;
        let started = Instant::now();
        say(format!("[cmdx] pulling image {image}\n"));
        let reg = registry::Registry::new(image, s)?;
        let (manifest, digest) = reg.manifest().await?;
        let total: u64 = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add);
        if total > s.max_download_bytes {
            return Err(ImageError::TooLarge(format!(
                "{image}: layers total {total} bytes, over the agent's cap of {} bytes",
                s.max_download_bytes
            )));
        }
        let config_bytes = reg.config(&manifest.config, 4 << 20).await?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::Unusable(format!("{image}: config is not valid: {e}")))?;
        if config.os.as_deref().is_some_and(|o| o != "linux")
            || config.architecture.as_deref().is_some_and(|a| a != "amd64")
        {
            return Err(ImageError::Unusable(format!(
                "{image} is for {}/{}, this agent runs linux/amd64",
                config.os.as_deref().unwrap_or("?"),
                config.architecture.as_deref().unwrap_or("?")
            )));
        }
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if !diff_ids.is_empty() && diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Unusable(format!(
                "{image}: the config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let id = manifest
            .config
            .digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::Unusable(format!("{image}: config digest is not sha256")))?
            .to_ascii_lowercase();
        let roots = self.inner.dir.join("roots");
        let final_dir = roots.join(&id);
        let cfg = config.config.unwrap_or_default();
        let entry = |bytes, entries| ImageEntry {
            manifest_digest: digest.clone(),
            bytes,
            entries,
            env: cfg.env.clone().unwrap_or_default(),
            working_dir: cfg.working_dir.clone().filter(|w| !w.is_empty()),
            last_used_ms: now_ms(),
        };
        if let Some(known) = self.lock().index.images.get(&id).cloned() {
            // The same image under another name: nothing to download.
            say(format!("[cmdx] {digest}: already unpacked\n"));
            return Ok((id, ImageEntry { ..known }));
        }
        let staging = self
            .inner
            .dir
            .join("staging")
            .join(format!("{id}-{}", rand::random::<u32>()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| local("create", &staging, e))?;
        let result = self
            .download_and_unpack(image, &reg, &manifest, &diff_ids, &staging, say)
            .await;
        let (bytes, entries) = match result {
            Ok(t) => t,
            Err(e) => {
                let _ = remove_tree(&staging);
                return Err(e);
            }
        };
        let tree = staging.join("rootfs");
        if final_dir.exists() {
            let _ = remove_tree(&final_dir);
        }
        fs::rename(&tree, &final_dir).map_err(|e| local("move", &final_dir, e))?;
        let _ = remove_tree(&staging);
        say(format!(
            "[cmdx] {digest}: {} layer(s), {} downloaded, {} unpacked in {:.2} s\n",
            manifest.layers.len(),
            human(total),
            human(bytes),
            started.elapsed().as_secs_f64()
        ));
        Ok((id, entry(bytes, entries)))
    }

    async fn download_and_unpack(
        &self,
        image: &ImageRef,
        reg: &registry::Registry,
        manifest: &oci_client::manifest::OciImageManifest,
        diff_ids: &[String],
        staging: &Path,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(u64, u64), ImageError> {
        let s = &self.inner.settings;
        let tree = staging.join("rootfs");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tree)
            .map_err(|e| local("create", &tree, e))?;
        let limits = UnpackLimits {
            max_bytes: s.max_unpacked_bytes,
            max_entries: s.max_entries,
        };
        let mut totals = unpack::Totals::default();
        // Download layer i+1 while layer i unpacks.
        let mut next = None;
        let path_of = |i: usize| staging.join(format!("layer-{i}"));
        for (i, layer) in manifest.layers.iter().enumerate() {
            let short = &layer.digest[..layer.digest.len().min(19)];
            let fetched = match next.take() {
                Some(h) => h,
                None => {
                    say(format!(
                        "[cmdx] {short}: downloading {}\n",
                        human(u64::try_from(layer.size).unwrap_or(0))
                    ));
                    reg.layer(layer, &path_of(i)).await
                }
            };
            fetched?;
            let file = fs::File::open(path_of(i)).map_err(|e| local("open", &path_of(i), e))?;
            let root = unpack::open_root(&tree).map_err(|e| local("open", &tree, e))?;
            let diff_id = diff_ids.get(i).cloned();
            let unpacking = tokio::task::spawn_blocking(move || {
                let r = unpack::apply_layer(&root, file, diff_id.as_deref(), limits, &mut totals);
                (r, totals)
            });
            let prefetch = async {
                match manifest.layers.get(i + 1) {
                    Some(l) => {
                        let short = &l.digest[..l.digest.len().min(19)];
                        say(format!(
                            "[cmdx] {short}: downloading {}\n",
                            human(u64::try_from(l.size).unwrap_or(0))
                        ));
                        Some(reg.layer(l, &path_of(i + 1)).await)
                    }
                    None => None,
                }
            };
            let (unpacked, fetched_next) = tokio::join!(unpacking, prefetch);
            next = fetched_next;
            let (report, t) =
                unpacked.map_err(|e| ImageError::Local(format!("unpacking panicked: {e}")))?;
            totals = t;
            let _ = fs::remove_file(path_of(i));
            let report = report.map_err(|e| match e {
                unpack::UnpackError::TooLarge { what } => {
                    ImageError::TooLarge(format!("{image}: {what}"))
                }
                unpack::UnpackError::DiffId { .. } => ImageError::Digest(format!("{image}: {e}")),
                other => ImageError::Unusable(format!("{image}: {other}")),
            })?;
            let mut line = format!("[cmdx] {short}: unpacked {} entries", report.entries);
            if report.neutralised > 0 || report.stripped_modes > 0 {
                line.push_str(&format!(
                    "; neutralised {} unsafe entries ({}), cleared {} setuid/setgid bits",
                    report.neutralised,
                    report.examples.join(", "),
                    report.stripped_modes
                ));
                tracing::warn!(image = %image, layer = %layer.digest, neutralised = report.neutralised, examples = ?report.examples, "unsafe layer entries skipped");
            }
            line.push('\n');
            say(line);
        }
        Ok((totals.bytes, totals.entries))
    }

    fn save(&self, st: &State) {
        let path = self.inner.dir.join("index.json");
        let tmp = self.inner.dir.join("index.json.tmp");
        let Ok(bytes) = serde_json::to_vec(&st.index) else {
            return;
        };
        if let Err(e) = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, "cannot save the image index");
        }
    }

    /// Evicts least recently used images no job holds until the cache fits its budget.
    pub(crate) fn evict(&self) {
        self.evict_except(None);
    }

    /// [`Images::evict`], sparing `keep`.
    fn evict_except(&self, keep: Option<&str>) {
        let mut removed = Vec::new();
        {
            let mut st = self.lock();
            let mut total: u64 = st.index.images.values().map(|e| e.bytes).sum();
            while total > self.inner.settings.cache_bytes {
                let victim = st
                    .index
                    .images
                    .iter()
                    .filter(|(id, _)| !st.in_use.contains_key(*id) && Some(id.as_str()) != keep)
                    .min_by_key(|(_, e)| e.last_used_ms)
                    .map(|(id, e)| (id.clone(), e.bytes));
                let Some((id, bytes)) = victim else { break };
                st.index.images.remove(&id);
                st.index.refs.retain(|_, v| *v != id);
                total -= bytes;
                removed.push(id);
            }
            if !removed.is_empty() {
                self.save(&st);
            }
        }
        for id in removed {
            let root = self.inner.dir.join("roots").join(&id);
            // Its template namespace (if any job ran in it) goes first: a later pull of the
            // same image must not find the old mounts.
            if let Ok(r) = image_root(&root, &[]) {
                cmdx_sandbox::release_template(&r.read_only);
            }
            tracing::info!(image = %id, "image evicted from the cache");
            let _ = remove_tree(&root);
        }
    }

    fn publish_metrics(&self) {
        let st = self.lock();
        metrics::gauge!(crate::telemetry::IMAGES_CACHED).set(st.index.images.len() as f64);
        metrics::gauge!(crate::telemetry::IMAGE_CACHE_BYTES)
            .set(st.index.images.values().map(|e| e.bytes).sum::<u64>() as f64);
    }
}

/// The parts of an image config the agent reads.
#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    os: Option<String>,
    architecture: Option<String>,
    config: Option<RunConfig>,
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct RunConfig {
    #[serde(rename = "Env")]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    working_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Names in an image's top level that the job's root provides itself.
const RESERVED: [&str; 5] = ["proc", "dev", "tmp", "workspace", "oldroot"];

/// The sandbox root of a job in the image at `tree`: each top-level entry of the tree bound
/// read-only at the same name (a symlink copied as a symlink), plus `read_write` (the job's
/// workspace, tmp and shm).
pub(crate) fn image_root(
    tree: &Path,
    read_write: &[cmdx_sandbox::Bind],
) -> io::Result<cmdx_sandbox::Root> {
    let mut read_only = Vec::new();
    let mut names: Vec<_> = fs::read_dir(tree)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        if RESERVED.iter().any(|r| n == *r) {
            continue;
        }
        read_only.push(cmdx_sandbox::Bind::new(
            tree.join(&n),
            Path::new("/").join(&n),
        ));
    }
    Ok(cmdx_sandbox::Root {
        read_only,
        read_write: read_write.to_vec(),
    })
}

/// Resolves `path` inside the tree at `root` as the job would see it (symlinks followed
/// within the tree, `..` stopping at its top); `None` when it does not exist.
pub(crate) fn resolve_in(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let host = root.join(&cur).join(&c);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            if target.is_absolute() {
                cur = PathBuf::new();
            }
            for comp in target.components().rev() {
                if let Component::Normal(s) = comp {
                    todo.push(s.to_string_lossy().into_owned());
                } else if comp == Component::ParentDir {
                    todo.push("..".into());
                }
            }
        } else {
            cur.push(&c);
        }
    }
    Some(root.join(cur))
}

/// Removes a tree without following symlinks (`std`'s removal does not follow them).
fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KB", b as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_tree_only() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::write(r.join("usr/bin/busybox"), b"").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/busybox", r.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("out")).unwrap();
        assert_eq!(resolve_in(r, "/bin/sh"), Some(r.join("usr/bin/busybox")));
        // `..` stops at the tree's top, as in the job's root.
        assert_eq!(resolve_in(r, "/out"), None);
        assert_eq!(resolve_in(r, "/missing"), None);
    }

    #[test]
    fn docker_config_credentials() {
        use base64::Engine as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cret");
        fs::write(
            &p,
            format!(r#"{{"auths": {{"https://r.example.com/": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        let c = read_credentials(&p).unwrap();
        assert_eq!(
            (
                c[0].registry.as_str(),
                c[0].username.as_str(),
                c[0].password.as_str()
            ),
            ("r.example.com", "me", "s3cret")
        );
        assert!(!format!("{:?}", c[0]).contains("s3cret"));
    }

    #[test]
    fn eviction_takes_the_least_recently_used_images_no_job_holds() {
        let d = tempfile::tempdir().unwrap();
        let settings = ImageSettings {
            cache_bytes: 150,
            ..ImageSettings::default()
        };
        let images = Images::open(d.path(), settings).unwrap();
        {
            let mut st = images.lock();
            for (id, used) in [("a", 1), ("b", 2), ("c", 3)] {
                fs::create_dir(d.path().join("images/roots").join(id)).unwrap();
                st.index.refs.insert(format!("r/{id}:1"), id.into());
                st.index.images.insert(
                    id.into(),
                    ImageEntry {
                        manifest_digest: String::new(),
                        bytes: 100,
                        entries: 1,
                        env: Vec::new(),
                        working_dir: None,
                        last_used_ms: used,
                    },
                );
            }
        }
        // A job holds the oldest image: it stays, the next ones go until the cache fits.
        let lease = {
            let mut st = images.lock();
            images.lease_locked(&mut st, "r/a:1").unwrap()
        };
        images.evict();
        let roots = d.path().join("images/roots");
        assert!(roots.join("a").exists());
        assert!(!roots.join("b").exists() && !roots.join("c").exists());
        drop(lease);
        // The index on disk says the same after a restart.
        drop(images);
        let again = Images::open(d.path(), ImageSettings::default()).unwrap();
        let st = again.lock();
        assert_eq!(st.index.images.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(st.index.refs.len(), 1);
    }
}
