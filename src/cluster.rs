//! `pmm-cp cluster`: status and membership operations through any node's internal service.

use crate::commands::dispatcher::Applied;
use crate::commands::{Command, CommandError, CommandMeta};
use crate::config::{ClusterCliArgs, ClusterOp, TokenCliArgs, TokenOp};
use crate::raft::network::{Auth, PeerClient, Peers, endpoint};
use crate::raft::proto::ForwardRequest;
use crate::raft::proto::cluster_client::ClusterClient;
use crate::raft::proto::{
    AddLearnerRequest, ChangeMembershipRequest, InitRequest, Member, NodeStatus, StatusRequest,
    StatusResponse,
};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::time::Duration;

/// The credential the CLI presents, from the cluster key file.
fn cli_auth(key_file: &std::path::Path) -> anyhow::Result<Auth> {
    let cipher = crate::crypto::Cipher::load(key_file)
        .with_context(|| "the cluster key is needed to use the internal service")?;
    Ok(Auth::new(cipher.internal_auth()))
}

/// Runs one cluster operation and prints the cluster's status after it.
pub async fn run(args: ClusterCliArgs) -> anyhow::Result<()> {
    let channel = endpoint(&args.node.addr)
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.node.addr))?;
    let mut client =
        ClusterClient::with_interceptor(channel, cli_auth(&args.node.cluster_key_file)?);
    let answer = match args.op {
        ClusterOp::Status => client.status(StatusRequest {}).await,
        ClusterOp::Init { members } => {
            let members = members
                .into_iter()
                .map(|(id, addr)| Member { id, addr })
                .collect();
            client.init(InitRequest { members }).await
        }
        ClusterOp::AddLearner { id, addr } => {
            let member = Some(Member { id, addr });
            client.add_learner(AddLearnerRequest { member }).await
        }
        ClusterOp::ChangeMembership { voters, retain } => {
            client
                .change_membership(ChangeMembershipRequest { voters, retain })
                .await
        }
    };
    let status = answer
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    if args.json {
        println!("{}", status_json(&status));
    } else {
        print!("{}", status_table(&status));
    }
    Ok(())
}

fn member_json(m: &NodeStatus) -> Value {
    json!({
        "id": m.id,
        "addr": m.addr,
        "role": m.role,
        "voter": m.voter,
        "term": m.term,
        "leader": m.leader,
        "last_log_index": m.last_log_index,
        "applied_index": m.applied_index,
        "snapshot_index": m.snapshot_index,
        "purged_index": m.purged_index,
        "revision": m.revision,
        "head_hash": m.head_hash,
        "lag": m.lag,
        "error": (!m.error.is_empty()).then_some(&m.error),
    })
}

/// The status as JSON, for scripts.
pub fn status_json(s: &StatusResponse) -> Value {
    json!({
        "leader": s.leader,
        "term": s.term,
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

/// The status as a table, for people.
fn status_table(s: &StatusResponse) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned());
    let mut rows = vec![
        [
            "ID", "ADDR", "ROLE", "VOTER", "TERM", "APPLIED", "LAG", "REVISION", "HEAD", "ERROR",
        ]
        .map(str::to_owned),
    ];
    for m in &s.members {
        rows.push([
            m.id.to_string(),
            m.addr.clone(),
            m.role.clone(),
            if m.voter { "yes" } else { "no" }.to_owned(),
            m.term.to_string(),
            opt(m.applied_index),
            opt(m.lag),
            m.revision.to_string(),
            m.head_hash.chars().take(12).collect(),
            m.error.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("leader: {}, term {}\n", opt(s.leader), s.term);
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A client that sends commands to one node's internal service; the node routes them to the
/// leader. For tools, tests and benchmarks until the public API exists.
#[derive(Clone)]
pub struct CommandClient {
    client: PeerClient,
}

impl CommandClient {
    /// A client for the node at `addr` (connects on first use), for nodes without a cluster
    /// key (tests, benchmarks).
    pub fn new(addr: &str) -> Result<Self, String> {
        Self::with_auth(addr, Auth::default())
    }

    /// A client presenting the cluster's credential (`Cipher::internal_auth`).
    pub fn with_auth(addr: &str, auth: Auth) -> Result<Self, String> {
        Ok(Self {
            client: Peers::new(Default::default(), auth).raft_client(0, addr)?,
        })
    }

    /// Sends commands; one result per command, or the call's own failure.
    pub async fn submit(
        &mut self,
        items: &[(Command, CommandMeta)],
        timeout: Duration,
    ) -> Result<Vec<Result<Applied, CommandError>>, tonic::Status> {
        let json = serde_json::to_vec(items)
            .map_err(|e| tonic::Status::invalid_argument(format!("encoding commands: {e}")))?;
        let mut req = tonic::Request::new(ForwardRequest { json });
        req.set_timeout(timeout);
        let resp = self.client.submit(req).await?.into_inner();
        serde_json::from_slice(&resp.json)
            .map_err(|e| tonic::Status::internal(format!("undecodable results: {e}")))
    }
}

/// Runs `pmm-cp token ...`: the command goes to the leader through the node at `--addr`.
pub async fn token(args: TokenCliArgs) -> anyhow::Result<()> {
    use crate::commands::tokens::{CreateToken, RevokeToken};
    use crate::domain::Role;
    use crate::domain::token::{new_token_secret, token_hash};
    let auth = cli_auth(&args.node.cluster_key_file)?;
    let mut client = CommandClient::with_auth(&args.node.addr, auth).map_err(anyhow::Error::msg)?;
    let (command, secret) = match &args.op {
        TokenOp::Create { name, role } => {
            let role = Role::parse(role).context("role")?;
            let secret = new_token_secret();
            let create = CreateToken {
                agent_id: None,
                name: name.clone(),
                role,
                hash: token_hash(&secret),
            };
            (Command::CreateToken(create), Some(secret))
        }
        TokenOp::Revoke { token } => (
            Command::RevokeToken(RevokeToken {
                token: token.clone(),
            }),
            None,
        ),
    };
    let results = client
        .submit(
            &[(command, CommandMeta::new("cli"))],
            Duration::from_secs(30),
        )
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
    let applied = match results.into_iter().next() {
        Some(Ok(a)) => a,
        Some(Err(e)) => anyhow::bail!("{e}"),
        None => anyhow::bail!("no result"),
    };
    match (secret, args.json) {
        (Some(secret), true) => println!(
            "{}",
            json!({ "token": secret, "revision": applied.revision })
        ),
        (Some(secret), false) => {
            println!("{secret}");
            eprintln!(
                "keep this token: it is shown only once (revision {})",
                applied.revision
            );
        }
        (None, true) => println!(
            "{}",
            json!({ "revoked": true, "revision": applied.revision })
        ),
        (None, false) => println!("revoked at revision {}", applied.revision),
    }
    Ok(())
}
