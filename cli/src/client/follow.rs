//! Follows a job's output over `/ws/client`: subscribes from a byte offset, writes stdout bytes to
//! stdout and stderr bytes to stderr exactly as received (flushed per chunk, so output appears as
//! the job produces it), and returns how the job ended. A dropped socket is reopened from the
//! next expected offset (bytes seen twice are skipped), so a hub restart costs no output.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use cmdx_proto::client::{ClientMsg, ServerMsg, SkipReason};
use cmdx_proto::{FailureKind, JobStatus, StreamKind};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::api::{Api, SIGNED_OUT, one_line};
use super::detail;
use super::progress::Progress;

/// How long to keep trying to reopen a dropped output socket.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// How a followed job ended (`outputEnd`).
#[derive(Debug, Clone)]
pub struct End {
    /// Final status.
    pub status: JobStatus,
    /// Exit code, if the command exited.
    pub exit_code: Option<i32>,
    /// Signal, if one killed the command.
    pub signal: Option<i32>,
    /// Failure kind of a failed job.
    pub failure: Option<FailureKind>,
}

/// Why [`follow`] returned.
pub enum Stop {
    /// The job is terminal and every byte was written.
    Ended(End),
    /// The requested `stop_at` offset was reached while the job still runs.
    Reached,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(api: &Api, job_id: &str, offset: u64) -> anyhow::Result<Ws> {
    let url = api.url("/ws/client");
    let ws_url = if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url
    };
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| anyhow!("bad hub URL {}: {e}", api.hub))?;
    let auth = format!("Bearer {}", api.token()?)
        .parse()
        .map_err(|_| anyhow!("the session token is not a valid header value: run cmdx login"))?;
    req.headers_mut().insert("authorization", auth);
    let connector = tokio_tungstenite::Connector::Rustls(api.tls.clone());
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector));
    let (mut ws, _) = match connecting.await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            detail(format_args!("output socket refused: HTTP {status}"));
            if status.as_u16() == 401 {
                bail!(SIGNED_OUT);
            }
            bail!(
                "the hub at {} refused the output stream (HTTP {})",
                api.hub,
                status.as_u16()
            );
        }
        Err(e) => {
            detail(format_args!("output socket error: {e:?}"));
            if let Some(tls) = super::api::tls_failure(&api.hub, &e) {
                return Err(tls);
            }
            bail!(
                "cannot reach the hub at {}: {}",
                api.hub,
                one_line(&e.to_string())
            );
        }
    };
    let sub = ClientMsg::SubscribeOutput {
        job_id: job_id.to_string(),
        offset,
    };
    ws.send(Message::text(serde_json::to_string(&sub)?))
        .await
        .map_err(|e| anyhow!("cannot subscribe to the job's output: {e}"))?;
    Ok(ws)
}

/// Writes job output to our own stdout/stderr. A closed stdout (e.g. `| head`) is an error.
fn write_out(stream: StreamKind, data: &[u8]) -> anyhow::Result<()> {
    let r = match stream {
        StreamKind::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|()| o.flush())
        }
        StreamKind::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|()| e.flush())
        }
    };
    r.map_err(|e| anyhow!("cannot write the job's output: {e}"))
}

/// Streams job `job_id`'s output from byte `offset` until the job ends, or until `stop_at` bytes
/// when given (the job may still be running then). While the job is queued, the hub's `queued`
/// messages go to `progress`, which is told when the job leaves the queue.
pub async fn follow(
    api: &Api,
    job_id: &str,
    offset: u64,
    stop_at: Option<u64>,
    progress: Option<&Progress>,
) -> anyhow::Result<Stop> {
    let mut next = offset;
    if stop_at.is_some_and(|s| next >= s) {
        return Ok(Stop::Reached);
    }
    let mut ws = connect(api, job_id, next).await?;
    let mut down_since: Option<Instant> = None;
    // Whether the job was seen out of the queue (assigned, running).
    let mut started = false;
    loop {
        let msg = ws.next().await;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                // The socket dropped before the end: reopen it from where we are.
                if let Some(Err(e)) = &msg {
                    detail(format_args!("output socket dropped: {e}"));
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                let mut delay = Duration::from_millis(200);
                ws = loop {
                    match connect(api, job_id, next).await {
                        Ok(ws) => break ws,
                        Err(e) if since.elapsed() < RECONNECT_FOR => {
                            detail(format_args!("reconnecting: {e:#}"));
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        Err(e) => return Err(e.context("lost the job's output stream")),
                    }
                };
                continue;
            }
            Some(Ok(_)) => continue,
        };
        down_since = None;
        let msg: ServerMsg = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                detail(format_args!("ignoring an unknown message: {e}"));
                continue;
            }
        };
        match msg {
            ServerMsg::Output {
                job_id: id,
                offset,
                stream,
                data,
                ..
            } if id == job_id => {
                let end = offset + data.len() as u64;
                if end <= next {
                    continue; // seen already (replayed after a reconnect)
                }
                let skip = next.saturating_sub(offset) as usize;
                started = true;
                if let Some(p) = progress {
                    p.left_queue();
                }
                write_out(stream, &data[skip..])?;
                next = end;
                if stop_at.is_some_and(|s| next >= s) {
                    return Ok(Stop::Reached);
                }
            }
            ServerMsg::OutputSkipped {
                job_id: id,
                offset,
                reason,
            } if id == job_id && offset > next => {
                let n = offset - next;
                match reason {
                    SkipReason::Cap => super::note(format_args!(
                        "cmdx: {n} bytes of output were dropped by the hub's output cap"
                    )),
                    SkipReason::EarlierAttempt => super::note(format_args!(
                        "cmdx: the job was retried; the {n} bytes of output of its earlier \
                         attempts are not kept"
                    )),
                }
                next = offset;
            }
            ServerMsg::OutputAttempt {
                job_id: id,
                attempt,
                ..
            } if id == job_id => super::note(format_args!(
                "cmdx: the job was retried (the earlier attempt did not finish); attempt \
                 {attempt}'s output follows"
            )),
            ServerMsg::OutputEnd {
                job_id: id,
                status,
                exit_code,
                signal,
                failure,
                ..
            } if id == job_id => {
                if let Some(p) = progress {
                    p.left_queue();
                }
                return Ok(Stop::Ended(End {
                    status,
                    exit_code,
                    signal,
                    failure,
                }));
            }
            ServerMsg::Queued {
                job_id: id,
                position,
                no_matching_worker,
                reason,
            } if id == job_id => {
                if let Some(p) = progress {
                    p.queued(position, no_matching_worker, reason);
                }
            }
            ServerMsg::Job(j) if j.job_id == job_id && j.status != JobStatus::Queued => {
                started = true;
                if let Some(p) = progress {
                    p.left_queue();
                }
            }
            // Back in the queue after it started: its attempt was lost (the worker went away
            // past its grace, or was removed); another attempt follows.
            ServerMsg::Job(j) if j.job_id == job_id && started => {
                started = false;
                let on = j
                    .worker_id
                    .map(|w| format!(" on worker {w}"))
                    .unwrap_or_default();
                super::note(format_args!(
                    "cmdx: attempt {}{on} did not finish; job {job_id} is queued again",
                    j.attempt
                ));
            }
            ServerMsg::Error(e) if e.code == "not_found" => bail!("job {job_id} not found"),
            ServerMsg::Error(e) => bail!(
                "the hub refused the output stream: {} ({})",
                one_line(&e.message),
                e.code
            ),
            _ => {}
        }
    }
}
