//! A secret given in a command appears in no stored event, no log line and no query row in
//! plain text; every read path but the agent one redacts even its ciphertext.

mod support;

use pmmcp::commands::add_service::{
    AddManagedService, AddRdsService, AddServiceCommon, RdsEngine, ServiceKind,
};
use pmmcp::commands::agents::ChangeAgent;
use pmmcp::commands::{Command, CommandMeta};
use pmmcp::crypto::Cipher;
use pmmcp::domain::{AgentType, PMM_SERVER_ID};
use pmmcp::store::{self, ReadFilter, Secrets};
use std::io::Write;
use std::sync::{Arc, Mutex};
use support::*;

/// Every log line, at every level, from every thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PASSWORD: &str = "pl41n-DB-password";
const AGENT_PASSWORD: &str = "pl41n-agent-password";
const AWS_SECRET: &str = "pl41n-aws-secret-key";

#[tokio::test]
async fn secrets_appear_nowhere_in_plain_text() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let cipher = Cipher::random();
    let db = TestDb::new().await;
    let (pool, d) = db.dispatcher().await;

    let common = AddServiceCommon {
        service_name: "pg-secret".to_owned(),
        node_id: Some(PMM_SERVER_ID.into()),
        address: Some("127.0.0.1".to_owned()),
        port: Some(5432),
        pmm_agent_id: Some(PMM_SERVER_ID.into()),
        username: Some("pmm".to_owned()),
        password: Some(cipher.seal(PASSWORD)),
        agent_password: Some(cipher.seal(AGENT_PASSWORD)),
        ..AddServiceCommon::default()
    };
    let kind = ServiceKind::Postgresql {
        database_name: String::new(),
        qan_pgstatements: true,
        qan_pgstatmonitor: false,
        postgresql: Default::default(),
        qan: Default::default(),
    };
    d.dispatch(
        Command::AddManagedService(AddManagedService { common, kind }),
        CommandMeta::new("test"),
    )
    .await
    .expect("postgresql added");
    let rds = AddRdsService {
        region: "us-east-1".to_owned(),
        instance_id: "rds-secret".to_owned(),
        address: "rds-secret.example.us-east-1.rds.amazonaws.com".to_owned(),
        port: 3306,
        engine: Some(RdsEngine::Mysql),
        username: "pmm".to_owned(),
        password: Some(cipher.seal(PASSWORD)),
        aws_access_key: Some("AKIAEXAMPLE".to_owned()),
        aws_secret_key: Some(cipher.seal(AWS_SECRET)),
        rds_exporter: true,
        qan: true,
        ..AddRdsService::default()
    };
    d.dispatch(Command::AddRdsService(rds), CommandMeta::new("test"))
        .await
        .expect("rds added");
    // A change that carries a new password, and a rejected one that carries it too.
    let exporter = d
        .state()
        .agents
        .values()
        .find(|a| a.agent_type == AgentType::PostgresExporter)
        .map(|a| a.agent_id.clone())
        .expect("exporter");
    let mut change = ChangeAgent::new(exporter.clone(), AgentType::PostgresExporter);
    change.password = Some(cipher.seal(PASSWORD));
    d.dispatch(Command::ChangeAgent(change), CommandMeta::new("test"))
        .await
        .expect("changed");
    let mut wrong = ChangeAgent::new(exporter, AgentType::MysqldExporter);
    wrong.password = Some(cipher.seal(PASSWORD));
    let err = d
        .dispatch(Command::ChangeAgent(wrong), CommandMeta::new("test"))
        .await
        .expect_err("type mismatch");

    let plain = [PASSWORD, AGENT_PASSWORD, AWS_SECRET];
    let absent = |what: &str, text: &str| {
        for p in plain {
            assert!(!text.contains(p), "{what} holds a secret in plain text");
        }
    };

    // Stored events: ciphertext only.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT payload::text || metadata::text FROM events ORDER BY position")
            .fetch_all(&pool)
            .await
            .expect("events");
    let stored = stored.join("\n");
    absent("the events table", &stored);
    assert!(stored.contains("enc:v1:"), "the secrets are stored sealed");

    // Query tables: neither plain text nor ciphertext.
    let rows = serde_json::to_string(
        &store::query_tables::snapshot(&pool)
            .await
            .expect("snapshot"),
    )
    .expect("json");
    absent("the query tables", &rows);
    assert!(
        !rows.contains("enc:v1:"),
        "query rows hold no ciphertext either"
    );

    // The redacting read path (history, CLI): no ciphertext; the agent path opens with the key.
    let all = ReadFilter {
        after: 0,
        limit: 10_000,
        ..Default::default()
    };
    let redacted = serde_json::to_string(
        &store::log::read(&pool, &all, Secrets::Redact)
            .await
            .expect("read")
            .iter()
            .map(|e| &e.payload)
            .collect::<Vec<_>>(),
    )
    .expect("json");
    absent("a redacted read", &redacted);
    assert!(!redacted.contains("enc:v1:") && redacted.contains("[redacted]"));
    let kept = store::log::read(&pool, &all, Secrets::Keep)
        .await
        .expect("read");
    let mut opened = Vec::new();
    for e in &kept {
        if let pmmcp::events::Event::AgentAdded { agent }
        | pmmcp::events::Event::AgentChanged { agent } = e.decode().expect("decode")
        {
            for s in [
                &agent.password,
                &agent.agent_password,
                &agent.aws.aws_secret_key,
            ]
            .into_iter()
            .flatten()
            {
                opened.push(cipher.open(s).expect("opens with the cluster key"));
            }
        }
    }
    for p in plain {
        assert!(
            opened.iter().any(|o| o == p),
            "the agent path recovers {p:?}"
        );
    }

    // Errors, state dumps and every log line.
    absent("a rejection", &err.to_string());
    absent("the state's Debug", &format!("{:?}", d.state()));
    let logged = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8 logs");
    assert!(!logged.is_empty(), "the dispatcher logged at trace level");
    absent("the logs", &logged);
    assert!(
        !logged.contains("enc:v1:"),
        "logs hold no ciphertext either"
    );
}
