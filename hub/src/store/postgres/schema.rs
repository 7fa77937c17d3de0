//! The PostgreSQL schema, as versioned migrations applied at start under an advisory lock.
//!
//! Tables (every record column is the same JSON the sled backend stores, so both backends load
//! the same records and old ones keep loading):
//!
//! | table | key | what |
//! |---|---|---|
//! | `cmdx_schema` | `version` | migrations applied, with when |
//! | `jobs` | `id` | `record` (JSON [`JobRecord`](super::JobRecord)), `owner`, `unfinished`, `version` (bumped by every update: the compare-and-swap token) |
//! | `output` | `(job_id, idx)` | `byte_offset`, `chunk` ([`ChunkRecord::encode`](super::ChunkRecord::encode)) |
//! | `users` | `id` | `email` (unique), `record` |
//! | `files` | `id` | `owner`, `record` |
//! | `workers` | `id` | `record` |
//! | `worker_tokens` | `id` | `record` |
//! | `revoked_sessions` | `sid` | `exp_s` |
//! | `secrets` | `name` | `value`: keys every hub of a cluster must share (session JWT, worker tokens) |
//! | `blobs`, `blob_parts` | `sha256`, `(sha256, part)` | uploaded contents every hub reads, in parts of 1 MiB; the `blobs` row is written last, in the same transaction: a blob is there whole or not at all |
//! | `drains` | `worker_id` | `record` (JSON [`DrainRecord`](super::DrainRecord)): workers an admin drained, until resumed |
//! | `presence` | `worker_id` | `hub_id`, `seen_at` (the database's clock): which hub holds a worker's connection, refreshed every few seconds |
//!
//! A migration never edits an applied one: a change is a new entry at the end.

/// `(version, SQL)`, in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE jobs (
    id text PRIMARY KEY,
    owner text NOT NULL,
    unfinished boolean NOT NULL,
    version bigint NOT NULL DEFAULT 0,
    record jsonb NOT NULL
);
CREATE INDEX jobs_by_owner ON jobs (owner, id);
CREATE INDEX jobs_unfinished ON jobs (id) WHERE unfinished;
CREATE TABLE output (
    job_id text NOT NULL,
    idx bigint NOT NULL,
    byte_offset bigint NOT NULL,
    chunk bytea NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX output_by_offset ON output (job_id, byte_offset);
CREATE TABLE users (
    id text PRIMARY KEY,
    email text NOT NULL UNIQUE,
    record jsonb NOT NULL
);
CREATE TABLE files (
    id text PRIMARY KEY,
    owner text NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX files_by_owner ON files (owner, id);
CREATE TABLE workers (id text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE worker_tokens (id text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE revoked_sessions (sid text PRIMARY KEY, exp_s bigint NOT NULL);
CREATE TABLE secrets (name text PRIMARY KEY, value bytea NOT NULL);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE presence (
    worker_id text PRIMARY KEY,
    hub_id text NOT NULL,
    seen_at timestamptz NOT NULL
);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE blob_parts (
    sha256 text NOT NULL,
    part int NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (sha256, part)
);
CREATE TABLE blobs (sha256 text PRIMARY KEY, size bigint NOT NULL, parts int NOT NULL);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE drains (worker_id text PRIMARY KEY, record jsonb NOT NULL);
"#,
    ),
];

/// Key of the advisory lock held while migrating ("cmdx" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x636d_6478;
