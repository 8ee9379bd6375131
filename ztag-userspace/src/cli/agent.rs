//! `ztag vault`, `ztag approvals` and `ztag audit`: the agent module of the
//! running daemon, through its admin socket.

use std::{io::Read, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{
    admin::{
        agent::{Decision, VaultPut, VaultRemove},
        client::AdminClient,
    },
    agent::{approvals::Approval, audit::Record, vault::EntryView},
};

/// `ztag vault`.
#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// Store (or replace) a user's credential for a connection. The secret
    /// is read from stdin (or a file), never from the command line.
    Put {
        /// The user: the principal subject the gateway sees (`sub`).
        #[arg(long)]
        user: String,
        /// The connection name (`[[agent.connection]] name`).
        #[arg(long)]
        connection: String,
        /// Read the secret from this file instead of stdin.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// A file with an OAuth refresh token to store with it.
        #[arg(long)]
        refresh_token_file: Option<PathBuf>,
        /// The secret expires after this long (e.g. 1h); with a refresh
        /// token the gateway refreshes it then.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List stored credentials (never the secrets).
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a credential.
    Rm {
        /// The user.
        #[arg(long)]
        user: String,
        /// The connection.
        #[arg(long)]
        connection: String,
    },
    /// Re-seal every entry under the current key (after adding a new key
    /// and moving the old one to previous_key_files).
    Rotate,
}

/// `ztag approvals`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// List approvals, newest first (pending ones by default).
    List {
        /// pending, approved, denied, expired or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one approval in full (JSON).
    Show {
        /// Its id.
        id: String,
    },
    /// Approve: the held request goes on (an async one is sent now).
    Approve {
        /// Its id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who approves (default: $SUDO_USER, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Deny: the caller gets a refusal.
    Deny {
        /// Its id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who denies (default: $SUDO_USER, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

fn who(by: Option<String>) -> String {
    let u = by
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into());
    format!("cli:{u}")
}

fn read_secret(file: Option<&PathBuf>) -> Result<String> {
    let mut s = String::new();
    match file {
        Some(f) => {
            s = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the secret from stdin")?;
        }
    }
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("the secret is empty (give it on stdin or with --secret-file)");
    }
    Ok(s)
}

fn when(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            let d = (ms - crate::state::now_ms()) / 1000;
            if d >= 0 {
                format!(
                    "in {}",
                    humantime::format_duration(Duration::from_secs(d as u64))
                )
            } else {
                format!(
                    "{} ago",
                    humantime::format_duration(Duration::from_secs((-d) as u64))
                )
            }
        }
    }
}

/// Runs `ztag vault …`.
pub async fn vault(client: &AdminClient, cmd: VaultCmd) -> Result<()> {
    match cmd {
        VaultCmd::Put {
            user,
            connection,
            secret_file,
            refresh_token_file,
            expires_in,
        } => {
            let token = read_secret(secret_file.as_ref())?;
            let refresh_token = match &refresh_token_file {
                Some(f) => Some(read_secret(Some(f))?),
                None => None,
            };
            let _: serde_json::Value = client
                .post(
                    "/v1/vault",
                    &VaultPut {
                        user: user.clone(),
                        connection: connection.clone(),
                        token,
                        refresh_token,
                        expires_in: expires_in.map(|d| d.as_secs()),
                    },
                )
                .await?;
            println!("stored the credential of {user} for {connection}");
        }
        VaultCmd::List { user, json } => {
            let path = match &user {
                Some(u) => format!(
                    "/v1/vault?user={}",
                    form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>()
                ),
                None => "/v1/vault".into(),
            };
            let rows: Vec<EntryView> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<32} {:<20} {:<13} {:<8} {:<20}",
                    "USER", "CONNECTION", "KEY", "REFRESH", "EXPIRES"
                );
                for r in rows {
                    println!(
                        "{:<32} {:<20} {:<13} {:<8} {:<20}",
                        r.user,
                        r.connection,
                        r.key_id,
                        if r.has_refresh_token { "yes" } else { "no" },
                        when(r.expires_at_ms)
                    );
                }
            }
        }
        VaultCmd::Rm { user, connection } => {
            let _: serde_json::Value = client
                .post(
                    "/v1/vault/remove",
                    &VaultRemove {
                        user: user.clone(),
                        connection: connection.clone(),
                    },
                )
                .await?;
            println!("removed the credential of {user} for {connection}");
        }
        VaultCmd::Rotate => {
            let v: serde_json::Value = client.post("/v1/vault/rotate", &()).await?;
            println!(
                "re-sealed {} entr{} under key {}",
                v["resealed"],
                if v["resealed"] == 1 { "y" } else { "ies" },
                v["key_id"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// Runs `ztag approvals …`.
pub async fn approvals(client: &AdminClient, cmd: ApprovalsCmd) -> Result<()> {
    match cmd {
        ApprovalsCmd::List {
            status,
            limit,
            json,
        } => {
            let rows: Vec<Approval> = client
                .get(&format!("/v1/approvals?status={status}&limit={limit}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<32} {:<8} {:<24} {:<28} {:<16} {:<14} WHY",
                    "ID", "STATUS", "WHO", "WHAT", "ROUTE", "EXPIRES"
                );
                for a in rows {
                    println!(
                        "{:<32} {:<8} {:<24} {:<28} {:<16} {:<14} {}",
                        a.id,
                        format!("{:?}", a.status).to_lowercase(),
                        a.subject.as_deref().unwrap_or("-"),
                        a.target,
                        a.route,
                        if a.status == crate::agent::approvals::Status::Pending {
                            when(Some(a.deadline_ms))
                        } else {
                            a.decided_by.clone().unwrap_or_default()
                        },
                        a.why
                    );
                }
            }
        }
        ApprovalsCmd::Show { id } => {
            let a: Approval = client.get(&format!("/v1/approvals/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&a)?);
        }
        ApprovalsCmd::Approve { id, note, by } => decide(client, &id, true, note, by).await?,
        ApprovalsCmd::Deny { id, note, by } => decide(client, &id, false, note, by).await?,
    }
    Ok(())
}

/// `ztag approvals approve|deny`.
pub async fn decide(
    client: &AdminClient,
    id: &str,
    approve: bool,
    note: Option<String>,
    by: Option<String>,
) -> Result<()> {
    let verb = if approve { "approve" } else { "deny" };
    let a: Approval = client
        .post(
            &format!("/v1/approvals/{id}/{verb}"),
            &Decision { by: who(by), note },
        )
        .await?;
    println!(
        "{} {} ({} by {})",
        a.id,
        format!("{:?}", a.status).to_lowercase(),
        a.target,
        a.subject.as_deref().unwrap_or("-")
    );
    Ok(())
}

/// Runs `ztag audit`.
pub async fn audit(
    client: &AdminClient,
    kind: Option<String>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(k) = kind {
        path.push_str(&format!("&kind={k}"));
    }
    let rows: Vec<Record> = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<24} {:<16} {:<28} {:<10} {:>10} REASON",
        "TIME", "KIND", "WHO", "AGENT", "WHAT", "DECISION", "MS"
    );
    for r in rows {
        let t = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(r.time_ms.max(0) as u64),
        );
        println!(
            "{:<20} {:<10} {:<24} {:<16} {:<28} {:<10} {:>10} {}",
            t.to_string().trim_end_matches('Z'),
            r.kind,
            r.subject.as_deref().unwrap_or("-"),
            r.client_id.as_deref().unwrap_or("-"),
            r.target,
            r.decision,
            r.duration_us
                .map(|u| format!("{:.2}", u as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
