//! `cmdx login`, `cmdx logout`, `cmdx token worker|list|revoke` and `cmdx user …`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, anyhow, bail};
use cmdx_proto::rest::{
    DeleteUserResponse, LoginRequest, LoginResponse, MintTokenRequest, MintTokenResponse,
    QuotaRequest, RegisterRequest, UpdateUserRequest, UserView, WorkerTokenList,
};
use reqwest::StatusCode;

use super::api::{Api, hub_status};
use super::config::{self, ConfigFile};
use super::{LoginArgs, LogoutArgs, QuotaValue, TokenArgs, TokenCmd, UserArgs, UserCmd, detail};

/// Reads the first line of stdin (without its line ending).
fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read stdin")?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        bail!("no password on stdin");
    }
    Ok(line)
}

/// Prompts on the terminal (stderr) and reads a line.
fn prompt(label: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(label.as_bytes()).and_then(|()| err.flush());
    drop(err);
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer")?;
    Ok(line.trim().to_string())
}

/// A password: from stdin with `--password-stdin`, else prompted without echo on a terminal.
fn password(from_stdin: bool, label: &str, confirm: bool) -> anyhow::Result<String> {
    if from_stdin {
        return read_stdin_line();
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password: pass --password-stdin");
    }
    let p = rpassword::prompt_password(label).context("cannot read the password")?;
    if confirm {
        let again = rpassword::prompt_password("again: ").context("cannot read the password")?;
        if again != p {
            bail!("the passwords differ");
        }
    }
    if p.is_empty() {
        bail!("empty password");
    }
    Ok(p)
}

/// `cmdx login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<i32> {
    let mut conn = config::resolve(&args.conn)?;
    conn.token = None;
    let api = Api::new(&conn)?;
    let email = match args.email {
        Some(e) => e,
        None if std::io::stdin().is_terminal() && !args.password_stdin => prompt("email: ")?,
        None => bail!("pass --email (no terminal to ask for it)"),
    };
    if email.is_empty() {
        bail!("empty email");
    }
    let password = password(args.password_stdin, "password: ", false)?;
    let req = LoginRequest {
        email: email.clone(),
        password,
    };
    let resp: LoginResponse = match api.post_json("/api/auth/login", &req, "login").await {
        Ok(r) => r,
        Err(e) if hub_status(&e) == Some(StatusCode::UNAUTHORIZED) => {
            bail!("wrong email or password for {email} at {}", api.hub)
        }
        Err(e) => return Err(e),
    };
    let mut file = config::load()?;
    file.hub = Some(conn.hub.clone());
    file.token = Some(resp.token);
    file.ca_file = match &conn.ca_file {
        // Kept absolute: later commands may run from another folder.
        Some(p) => Some(std::path::absolute(p).context("resolving the CA file's path")?),
        None => None,
    };
    file.email = Some(resp.user.email.clone());
    let path = config::save(&file)?;
    detail(format_args!("saved {}", path.display()));
    super::note(format_args!(
        "signed in to {} as {} ({})",
        conn.hub, resp.user.email, resp.user.role
    ));
    Ok(0)
}

/// `cmdx logout`: tells the hub (best effort) and forgets the token.
pub async fn logout(args: LogoutArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    if api.token().is_ok() {
        let rb = api.request(reqwest::Method::POST, "/api/auth/logout");
        if let Err(e) = api.send(rb, "logout").await {
            detail(format_args!("the hub did not take the logout: {e:#}"));
        }
    }
    let file = config::load()?;
    if file.token.is_some() {
        config::save(&ConfigFile {
            token: None,
            email: None,
            ..file
        })?;
    }
    super::note(format_args!("signed out"));
    Ok(0)
}

/// `cmdx token worker|list|revoke`.
pub async fn token(args: TokenArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    match args.what {
        TokenCmd::Worker { name, ttl, tags } => {
            let req = MintTokenRequest {
                name,
                ttl_secs: ttl.map(|d| d.as_secs().max(1)),
                tags,
            };
            let resp: MintTokenResponse = api
                .post_json("/api/workers/tokens", &req, "minting a worker token")
                .await?;
            super::out(&format!("{}\n", resp.token))?;
            let ca = match &conn.ca_file {
                Some(p) => format!(" --ca-file {}", p.display()),
                None => String::new(),
            };
            super::note(format_args!(
                "worker token {} expires {}; start an agent with: CMDX_AGENT_TOKEN=<TOKEN> cmdx \
                 agent --hub {}{ca} (or --token-file FILE)",
                resp.token_id, resp.expires_at, api.hub
            ));
            Ok(0)
        }
        TokenCmd::List { json } => {
            let list: WorkerTokenList = api
                .get_json("/api/workers/tokens", "listing worker tokens")
                .await?;
            if json {
                super::out(&format!("{}\n", serde_json::to_string(&list)?))?;
                return Ok(0);
            }
            let mut text = String::from("TOKEN ID\tNAME\tEXPIRES\tTAGS\tWORKERS\n");
            for t in &list.tokens {
                text.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    t.token_id,
                    t.name.as_deref().unwrap_or("-"),
                    t.expires_at,
                    t.tags.as_ref().map_or("any".to_string(), |t| t.join(",")),
                    if t.workers.is_empty() {
                        "-".to_string()
                    } else {
                        t.workers.join(",")
                    },
                ));
            }
            super::out(&text)?;
            Ok(0)
        }
        TokenCmd::Revoke { token_id } => {
            let path = format!("/api/workers/tokens/{token_id}");
            let rb = api.request(reqwest::Method::DELETE, &path);
            let resp = api
                .send(rb, &format!("revoking worker token {token_id}"))
                .await;
            let resp = resp.map_err(|e| match hub_status(&e) {
                Some(StatusCode::NOT_FOUND) => anyhow!("no worker token {token_id}"),
                _ => e,
            })?;
            let v: serde_json::Value = super::api::decode(resp, "revoking a worker token").await?;
            let closed = v["closedSessions"].as_array().map_or(0, Vec::len);
            super::note(format_args!(
                "worker token {token_id} revoked; {closed} agent session(s) closed"
            ));
            Ok(0)
        }
    }
}

/// `cmdx user add`.
pub async fn user(args: UserArgs) -> anyhow::Result<i32> {
    let conn = config::resolve(&args.conn)?;
    let api = Api::new(&conn)?;
    api.token()?;
    match args.what {
        UserCmd::Add {
            email,
            admin,
            password_stdin,
        } => {
            let password = password(password_stdin, &format!("password for {email}: "), true)?;
            let req = RegisterRequest {
                email: email.clone(),
                password,
                role: Some(if admin { "admin" } else { "user" }.to_string()),
            };
            let r: anyhow::Result<UserView> = api
                .post_json(
                    "/api/auth/register",
                    &req,
                    &format!("creating user {email}"),
                )
                .await;
            let user = r.map_err(|e| match hub_status(&e) {
                Some(StatusCode::CONFLICT) => anyhow!("user {email} already exists"),
                _ => e,
            })?;
            super::out(&format!("{}\n", user.id))?;
            super::note(format_args!("created {} ({})", user.email, user.role));
            Ok(0)
        }
        UserCmd::List => {
            let mut out = String::from("ID\tEMAIL\tROLE\tSTATE\n");
            for u in users(&api).await? {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    u.id,
                    u.email,
                    u.role,
                    if u.disabled { "disabled" } else { "active" }
                ));
            }
            super::out(&out)?;
            Ok(0)
        }
        UserCmd::Disable { user } => {
            update_user(
                &api,
                &user,
                UpdateUserRequest {
                    disabled: Some(true),
                    ..Default::default()
                },
                "disabled; their sessions ended",
            )
            .await
        }
        UserCmd::Enable { user } => {
            update_user(
                &api,
                &user,
                UpdateUserRequest {
                    disabled: Some(false),
                    ..Default::default()
                },
                "enabled",
            )
            .await
        }
        UserCmd::Role { user, role } => {
            let done = format!("now {role}; their sessions ended");
            update_user(
                &api,
                &user,
                UpdateUserRequest {
                    role: Some(role),
                    ..Default::default()
                },
                &done,
            )
            .await
        }
        UserCmd::Passwd {
            user,
            password_stdin,
        } => {
            let password = password(password_stdin, &format!("new password for {user}: "), true)?;
            update_user(
                &api,
                &user,
                UpdateUserRequest {
                    password: Some(password),
                    ..Default::default()
                },
                "has a new password; their sessions ended",
            )
            .await
        }
        UserCmd::Delete {
            user,
            keep_jobs: _,
            remove_jobs,
        } => {
            let u = find_user(&api, &user).await?;
            let mode = if remove_jobs { "remove" } else { "keep" };
            let r: DeleteUserResponse = api
                .send_json(
                    reqwest::Method::DELETE,
                    &format!("/api/users/{}?jobs={mode}", u.id),
                    &serde_json::json!({}),
                    &format!("deleting user {}", u.email),
                )
                .await?;
            let jobs = if r.jobs == "removed" {
                format!(
                    "{} jobs and {} files removed",
                    r.jobs_removed, r.files_removed
                )
            } else {
                "their jobs kept".to_string()
            };
            super::note(format_args!("deleted {}; {jobs}", u.email));
            Ok(0)
        }
        UserCmd::Quota {
            user,
            max_queued,
            max_running,
        } => {
            let mut u = find_user(&api, &user).await?;
            if max_queued.is_some() || max_running.is_some() {
                let pick = |given: Option<QuotaValue>, now: Option<u32>| match given {
                    None => now,
                    Some(QuotaValue::Default) => None,
                    Some(QuotaValue::Limit(n)) => Some(n),
                };
                let req = QuotaRequest {
                    max_queued: pick(max_queued, u.max_queued),
                    max_running: pick(max_running, u.max_running),
                };
                u = api
                    .send_json(
                        reqwest::Method::PUT,
                        &format!("/api/users/{}/quota", u.id),
                        &req,
                        &format!("setting the quota of {}", u.email),
                    )
                    .await?;
            }
            let shown = |v: Option<u32>| match v {
                None => "hub default".to_string(),
                Some(0) => "no limit".to_string(),
                Some(n) => n.to_string(),
            };
            super::out(&format!(
                "{}\tmax queued: {}\tmax running: {}\n",
                u.email,
                shown(u.max_queued),
                shown(u.max_running)
            ))?;
            Ok(0)
        }
    }
}

/// Every account (admin).
async fn users(api: &Api) -> anyhow::Result<Vec<UserView>> {
    #[derive(serde::Deserialize)]
    struct Users {
        users: Vec<UserView>,
    }
    let list: Users = api.get_json("/api/users/list", "the user list").await?;
    Ok(list.users)
}

/// The account with email or id `user`.
async fn find_user(api: &Api, user: &str) -> anyhow::Result<UserView> {
    let wanted = user.to_lowercase();
    users(api)
        .await?
        .into_iter()
        .find(|u| u.id == user || u.email == wanted)
        .ok_or_else(|| anyhow!("no user {user}"))
}

/// Applies `change` to the account `user` and says `done` about it on stderr.
async fn update_user(
    api: &Api,
    user: &str,
    change: UpdateUserRequest,
    done: &str,
) -> anyhow::Result<i32> {
    let u = find_user(api, user).await?;
    let changed: UserView = api
        .send_json(
            reqwest::Method::PATCH,
            &format!("/api/users/{}", u.id),
            &change,
            &format!("changing user {}", u.email),
        )
        .await?;
    super::note(format_args!("{} {done}", changed.email));
    Ok(0)
}
