-- Raft storage for this node (DESIGN fixed decision 6): the log entries, the vote, the committed
-- and purged log ids, and the state machine's last applied log id and membership. Each is written
-- durably before openraft is told it is saved; last_applied and membership change in the same
-- transaction as the events they cover (append_batch).
CREATE TABLE raft_log (
    log_index  BIGINT PRIMARY KEY,
    entry      JSONB NOT NULL
);

CREATE TABLE raft_state (
    id            BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    vote          JSONB,
    committed     JSONB,
    last_purged   JSONB,
    last_applied  JSONB,
    membership    JSONB
);
INSERT INTO raft_state (id) VALUES (TRUE);

-- The last snapshot built or installed: its meta and the bytes sent to other nodes.
CREATE TABLE raft_snapshot (
    id    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    meta  JSONB NOT NULL,
    data  BYTEA NOT NULL
);
