//! CreateToken and RevokeToken: only a hash is recorded; names are unique; revoking finds a
//! token by id or name.

use pmmcp::commands::tokens::{CreateToken, RevokeToken};
use pmmcp::commands::{Command, Ctx, ErrorClass, decide};
use pmmcp::domain::token::token_hash;
use pmmcp::domain::{Role, State};
use pmmcp::events::Event;

fn ctx() -> Ctx {
    Ctx::fixed(chrono::Utc::now(), 11)
}

fn create(name: &str, secret: &str) -> Command {
    Command::CreateToken(CreateToken {
        agent_id: None,
        name: name.to_owned(),
        role: Role::Viewer,
        hash: token_hash(secret),
    })
}

/// `state` with the command's events folded in.
fn after(state: &State, cmd: &Command) -> State {
    let mut s = state.clone();
    for e in decide(state, cmd, &ctx()).expect("accepted") {
        s.evolve(&e);
    }
    s
}

#[test]
fn create_token_records_the_hash_and_role_never_a_secret() {
    let events = decide(&State::default(), &create("ui", "s3cret"), &ctx()).expect("accepted");
    let [Event::TokenCreated { token }] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!((token.name.as_str(), token.role), ("ui", Role::Viewer));
    assert_eq!(token.hash, token_hash("s3cret"));
    assert!(
        !serde_json::to_string(&events)
            .expect("json")
            .contains("s3cret")
    );
}

#[test]
fn create_token_refuses_a_bad_hash_an_empty_name_and_a_taken_name() {
    let bad_hash = Command::CreateToken(CreateToken {
        agent_id: None,
        name: "ui".to_owned(),
        role: Role::Admin,
        hash: "not-a-hash".to_owned(),
    });
    let r = decide(&State::default(), &bad_hash, &ctx()).expect_err("refused");
    assert_eq!(r.class, ErrorClass::InvalidArgument);
    let r = decide(&State::default(), &create("", "x"), &ctx()).expect_err("refused");
    assert_eq!(r.class, ErrorClass::InvalidArgument);
    let state = after(&State::default(), &create("ui", "one"));
    let r = decide(&state, &create("ui", "two"), &ctx()).expect_err("refused");
    assert_eq!(r.class, ErrorClass::AlreadyExists);
    assert_eq!(r.message(), "Token with name \"ui\" already exists.");
}

#[test]
fn revoke_token_finds_it_by_id_or_name_and_an_unknown_one_is_not_found() {
    let state = after(&State::default(), &create("ui", "one"));
    let id = state.tokens.keys().next().expect("token").to_string();
    for token in [id, "ui".to_owned()] {
        let revoke = Command::RevokeToken(RevokeToken { token });
        let s = after(&state, &revoke);
        assert!(s.tokens.is_empty());
        assert!(s.token_by_hash(&token_hash("one")).is_none());
    }
    // A revoked secret is never accepted again, even under another name.
    let revoked = after(
        &state,
        &Command::RevokeToken(RevokeToken {
            token: "ui".to_owned(),
        }),
    );
    let r = decide(&revoked, &create("ui-again", "one"), &ctx()).expect_err("refused");
    assert_eq!(r.class, ErrorClass::AlreadyExists);
    let r = decide(
        &state,
        &Command::RevokeToken(RevokeToken {
            token: "nope".to_owned(),
        }),
        &ctx(),
    )
    .expect_err("refused");
    assert_eq!(r.class, ErrorClass::NotFound);
}
