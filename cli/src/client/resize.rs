//! A running job's terminal size: `cmdx job resize JOB COLSxROWS`, and the forwarding of the
//! user's own terminal size while a foreground `cmdx submit` follows a job (on `SIGWINCH`,
//! as `ssh -t` and `docker run -t` do).

use std::time::Duration;

use cmdx_proto::WindowSize;
use cmdx_proto::rest::{ResizeRequest, ResizeResponse};
use futures_util::{Stream, StreamExt as _};
use reqwest::StatusCode;

use super::api::{Api, HubError};
use super::detail;

/// How long the user's terminal must stay the same size before it is sent (a window dragged
/// by its corner signals many sizes in a row).
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How long after a size the hub could not take (the job is still queued, or the hub was
/// unreachable) it is sent again, doubling each time up to [`RETRY_MAX`]; a job that leaves
/// the queue gets it at once.
pub const RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two tries of the same size.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Parses `COLSxROWS` (`120x40`), each side 1 to [`WindowSize::MAX_SIDE`].
pub fn parse_size(s: &str) -> Result<WindowSize, String> {
    let bad = || format!("expected COLSxROWS, e.g. 120x40, not {s:?}");
    let (cols, rows) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |n: &str| n.trim().parse::<u16>().ok();
    let (Some(cols), Some(rows)) = (side(cols), side(rows)) else {
        return Err(bad());
    };
    let size = WindowSize { cols, rows };
    if !size.is_valid() {
        return Err(format!(
            "columns and rows must be between 1 and {}",
            WindowSize::MAX_SIDE
        ));
    }
    Ok(size)
}

/// Asks the hub to give job `id`'s terminal `size`; the size the job's terminal has now.
pub async fn resize(api: &Api, id: &str, size: WindowSize) -> anyhow::Result<WindowSize> {
    let req = ResizeRequest {
        job_id: id.to_string(),
        cols: size.cols.into(),
        rows: size.rows.into(),
    };
    let resp: ResizeResponse = api
        .post_json("/api/jobs/resize", &req, &format!("job {id}"))
        .await?;
    Ok(resp.tty_size)
}

/// What became of a size sent to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The job's terminal has it.
    Done,
    /// Not now (the job is still queued, the hub is away): send it again later.
    Later,
    /// Never (the job has no terminal, or is not the caller's): stop forwarding.
    Never,
}

/// How a failed resize is taken by the forwarder.
pub fn classify(e: &anyhow::Error) -> Sent {
    match e.downcast_ref::<HubError>() {
        Some(h) if h.status == StatusCode::CONFLICT && h.code == "not_running" => Sent::Later,
        Some(h)
            if h.status.is_client_error()
                && h.status != StatusCode::TOO_MANY_REQUESTS
                && h.status != StatusCode::REQUEST_TIMEOUT =>
        {
            Sent::Never
        }
        // 429, 5xx, transport errors: the hub may take it in a moment.
        _ => Sent::Later,
    }
}

/// Sends the user's terminal size to the hub each time it changes, until `changes` ends or
/// the hub says the job never takes one. `changes` yields on each resize of the user's
/// terminal (`SIGWINCH`); `now` reads its size (`None`: unknown); `send` posts a size. A burst of
/// changes is sent once, [`DEBOUNCE`] after the last; a size equal to the last one the job
/// got (`first`, the size it was submitted with) is not sent; a size the hub could not take
/// yet is sent again after [`RETRY`], doubling up to [`RETRY_MAX`], and at once when `started`
/// (the job left the queue) resolves, until it is taken or a newer size replaces it.
pub async fn forward<C, N, S, F>(
    changes: C,
    started: impl Future<Output = ()>,
    first: Option<WindowSize>,
    now: N,
    mut send: S,
) where
    C: Stream<Item = ()>,
    N: Fn() -> Option<WindowSize>,
    S: FnMut(WindowSize) -> F,
    F: Future<Output = Sent>,
{
    tokio::pin!(changes);
    tokio::pin!(started);
    let mut started_seen = false;
    let mut last = first;
    let mut pending = false;
    let mut retry = RETRY;
    loop {
        tokio::select! {
            change = changes.next() => {
                if change.is_none() {
                    return;
                }
                // Wait for the window to settle.
                loop {
                    match tokio::time::timeout(DEBOUNCE, changes.next()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_quiet) => break,
                    }
                }
            }
            () = &mut started, if pending && !started_seen => started_seen = true,
            () = tokio::time::sleep(retry), if pending => retry = (retry * 2).min(RETRY_MAX),
        }
        let Some(size) = now().filter(|s| s.is_valid()) else {
            continue;
        };
        if Some(size) == last {
            pending = false;
            continue;
        }
        match send(size).await {
            Sent::Done => {
                last = Some(size);
                pending = false;
                retry = RETRY;
            }
            Sent::Later => pending = true,
            Sent::Never => return,
        }
    }
}

/// [`forward`] of the process's own `SIGWINCH` and stdout terminal size to job `id`; returns
/// at once when the signal cannot be caught. Failures are said only with `--verbose`.
pub async fn forward_winch(
    api: &Api,
    id: &str,
    first: Option<WindowSize>,
    started: impl Future<Output = ()>,
) {
    let winch = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    {
        Ok(s) => s,
        Err(e) => {
            detail(format_args!("not following terminal resizes: {e}"));
            return;
        }
    };
    let changes =
        futures_util::stream::unfold(
            winch,
            |mut s| async move { s.recv().await.map(|()| ((), s)) },
        );
    forward(
        changes,
        started,
        first,
        super::submit::window_size,
        |size| async move {
            match resize(api, id, size).await {
                Ok(_) => {
                    detail(format_args!(
                        "job {id}: terminal resized to {}x{}",
                        size.cols, size.rows
                    ));
                    Sent::Done
                }
                Err(e) => {
                    detail(format_args!("job {id}: resize not sent: {e:#}"));
                    classify(&e)
                }
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::*;

    fn ws(cols: u16, rows: u16) -> WindowSize {
        WindowSize { cols, rows }
    }

    #[test]
    fn sizes_parse_as_cols_x_rows() {
        assert_eq!(parse_size("120x40"), Ok(ws(120, 40)));
        assert_eq!(parse_size(" 80X24 "), Ok(ws(80, 24)));
        assert_eq!(parse_size("1x1000"), Ok(ws(1, 1000)));
        for bad in ["120", "x40", "120x", "a x b", "-1x5", "120x40x2", ""] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("COLSxROWS"), "{bad}: {e}");
        }
        for out in ["0x10", "10x0", "1001x10", "99999x10"] {
            assert!(parse_size(out).is_err(), "{out}");
        }
        assert!(
            parse_size("0x10")
                .unwrap_err()
                .contains("between 1 and 1000")
        );
    }

    /// A scripted user terminal and hub: `changes` are the signals, `size` what the terminal
    /// reports, `sent` what reached the hub and when (ms from the start).
    struct Script {
        size: Arc<Mutex<Option<WindowSize>>>,
        sent: Arc<Mutex<Vec<(u64, WindowSize)>>>,
        answers: Arc<Mutex<Vec<Sent>>>,
    }

    impl Script {
        fn new() -> Script {
            Script {
                size: Arc::new(Mutex::new(None)),
                sent: Arc::default(),
                answers: Arc::default(),
            }
        }

        /// Forwards with `first` as the job's size; the job leaves the queue after
        /// `started_ms` (never: `None`).
        fn run(
            &self,
            first: Option<WindowSize>,
            started_ms: Option<u64>,
        ) -> (mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
            let starts = started_ms.map(|n| tokio::time::Instant::now() + Duration::from_millis(n));
            let started = async move {
                match starts {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let (tx, rx) = mpsc::channel::<()>(64);
            let changes = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|()| ((), rx))
            });
            let (size, sent, answers) =
                (self.size.clone(), self.sent.clone(), self.answers.clone());
            let start = tokio::time::Instant::now();
            let task = tokio::spawn(async move {
                forward(
                    changes,
                    started,
                    first,
                    move || *size.lock().unwrap(),
                    move |s| {
                        let (sent, answers) = (sent.clone(), answers.clone());
                        async move {
                            sent.lock()
                                .unwrap()
                                .push((start.elapsed().as_millis() as u64, s));
                            let mut a = answers.lock().unwrap();
                            if a.is_empty() {
                                Sent::Done
                            } else {
                                a.remove(0)
                            }
                        }
                    },
                )
                .await;
            });
            (tx, task)
        }

        fn set(&self, s: WindowSize) {
            *self.size.lock().unwrap() = Some(s);
        }

        fn sent(&self) -> Vec<(u64, WindowSize)> {
            self.sent.lock().unwrap().clone()
        }
    }

    async fn ms(n: u64) {
        tokio::time::sleep(Duration::from_millis(n)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_resizes_is_sent_once_after_it_settles() {
        let s = Script::new();
        let (tx, task) = s.run(Some(ws(80, 24)), None);
        for cols in 81..=90 {
            s.set(ws(cols, 24));
            tx.send(()).await.unwrap();
            ms(30).await;
        }
        ms(200).await;
        // The last signal came at 270 ms; sent 100 ms later, once, with the last size.
        assert_eq!(s.sent(), vec![(370, ws(90, 24))]);
        // The same size again is not sent; a new one is.
        tx.send(()).await.unwrap();
        ms(200).await;
        s.set(ws(100, 30));
        tx.send(()).await.unwrap();
        ms(200).await;
        assert_eq!(s.sent().len(), 2);
        assert_eq!(s.sent()[1].1, ws(100, 30));
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_submitted_size_and_unknown_sizes_are_not_sent() {
        let s = Script::new();
        let (tx, task) = s.run(Some(ws(80, 24)), None);
        tx.send(()).await.unwrap(); // no size known
        ms(200).await;
        s.set(ws(80, 24));
        tx.send(()).await.unwrap(); // what the job already has
        ms(200).await;
        assert_eq!(s.sent(), vec![]);
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_size_the_hub_cannot_take_yet_is_retried_until_it_can() {
        let s = Script::new();
        s.answers
            .lock()
            .unwrap()
            .extend([Sent::Later, Sent::Later, Sent::Done]);
        let (tx, task) = s.run(Some(ws(80, 24)), None);
        s.set(ws(100, 30));
        tx.send(()).await.unwrap();
        ms(5000).await;
        let times: Vec<u64> = s.sent().iter().map(|(t, _)| *t).collect();
        assert_eq!(times, vec![100, 1100, 3100], "then no more: it was taken");
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_size_refused_while_queued_is_sent_when_the_job_starts() {
        let s = Script::new();
        s.answers.lock().unwrap().push(Sent::Later);
        let (tx, task) = s.run(Some(ws(80, 24)), Some(400));
        s.set(ws(100, 30));
        tx.send(()).await.unwrap();
        ms(5000).await;
        assert_eq!(s.sent(), vec![(100, ws(100, 30)), (400, ws(100, 30))]);
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_to_one_every_30_seconds() {
        let s = Script::new();
        s.answers.lock().unwrap().extend([Sent::Later; 10]);
        let (tx, task) = s.run(Some(ws(80, 24)), None);
        s.set(ws(100, 30));
        tx.send(()).await.unwrap();
        ms(120_000).await;
        let times: Vec<u64> = s.sent().iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            vec![100, 1100, 3100, 7100, 15100, 31100, 61100, 91100]
        );
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_never_takes_a_size_ends_the_forwarding() {
        let s = Script::new();
        s.answers.lock().unwrap().push(Sent::Never);
        let (tx, task) = s.run(Some(ws(80, 24)), None);
        s.set(ws(100, 30));
        tx.send(()).await.unwrap();
        ms(200).await;
        assert!(task.is_finished(), "forwarding stopped");
        assert_eq!(s.sent().len(), 1);
        drop(tx);
    }

    #[test]
    fn refusals_are_classified() {
        let hub = |status: StatusCode, code: &str| {
            anyhow::Error::new(HubError {
                status,
                message: "m".into(),
                what: "job j".into(),
                retry_after: None,
                code: code.into(),
            })
        };
        assert_eq!(
            classify(&hub(StatusCode::CONFLICT, "not_running")),
            Sent::Later
        );
        assert_eq!(
            classify(&hub(StatusCode::CONFLICT, "no_terminal")),
            Sent::Never
        );
        assert_eq!(
            classify(&hub(StatusCode::NOT_FOUND, "not_found")),
            Sent::Never
        );
        assert_eq!(
            classify(&hub(StatusCode::TOO_MANY_REQUESTS, "rate_limited")),
            Sent::Later
        );
        assert_eq!(
            classify(&hub(StatusCode::SERVICE_UNAVAILABLE, "unavailable")),
            Sent::Later
        );
        assert_eq!(
            classify(&anyhow::anyhow!("cannot reach the hub")),
            Sent::Later
        );
    }
}
