-- The event log, its head, command results, and the query tables projected from it.

CREATE TABLE events (
    position        BIGINT PRIMARY KEY,
    stream_id       TEXT NOT NULL,
    stream_version  BIGINT NOT NULL,
    event_id        UUID NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         JSONB NOT NULL,
    metadata        JSONB NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    prev_hash       BYTEA NOT NULL,
    hash            BYTEA NOT NULL,
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_version),
    CONSTRAINT events_position_positive CHECK (position > 0)
);
CREATE INDEX events_type_position ON events (event_type, position);

-- The single row every append locks: the position and hash of the last event. Positions are
-- assigned only by the transaction that holds this lock (one writer), never by a sequence.
CREATE TABLE log_head (
    id        BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    position  BIGINT NOT NULL,
    hash      BYTEA NOT NULL
);
INSERT INTO log_head (id, position, hash) VALUES (TRUE, 0, decode(repeat('00', 32), 'hex'));

-- Every decided command's result, so a repeated command id gets the first answer: the positions
-- of its events, or no positions (it changed nothing), or its rejection ({class, message}).
CREATE TABLE command_results (
    command_id      TEXT PRIMARY KEY,
    first_position  BIGINT,
    last_position   BIGINT,
    rejection       JSONB,
    CHECK ((first_position IS NULL) = (last_position IS NULL)),
    CHECK (rejection IS NULL OR first_position IS NULL)
);

CREATE TABLE nodes (
    node_id             TEXT PRIMARY KEY,
    node_type           TEXT NOT NULL CHECK (node_type <> ''),
    node_name           TEXT NOT NULL UNIQUE CHECK (node_name <> ''),
    machine_id          TEXT CHECK (machine_id <> ''),
    distro              TEXT NOT NULL DEFAULT '',
    node_model          TEXT NOT NULL DEFAULT '',
    az                  TEXT NOT NULL DEFAULT '',
    custom_labels       JSONB,
    address             TEXT NOT NULL,
    region              TEXT CHECK (region <> ''),
    container_id        TEXT UNIQUE CHECK (container_id <> ''),
    container_name      TEXT CHECK (container_name <> ''),
    instance_id         TEXT NOT NULL DEFAULT '',
    is_pmm_server_node  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (address, region)
);
CREATE INDEX nodes_type ON nodes (node_type, node_id);

CREATE TABLE services (
    service_id       TEXT PRIMARY KEY,
    service_type     TEXT NOT NULL CHECK (service_type <> ''),
    service_name     TEXT NOT NULL UNIQUE CHECK (service_name <> ''),
    node_id          TEXT NOT NULL,
    database_name    TEXT NOT NULL DEFAULT '',
    environment      TEXT NOT NULL DEFAULT '',
    cluster          TEXT NOT NULL DEFAULT '',
    replication_set  TEXT NOT NULL DEFAULT '',
    external_group   TEXT NOT NULL DEFAULT '',
    custom_labels    JSONB,
    address          TEXT CHECK (address <> ''),
    port             INTEGER CHECK (port > 0 AND port < 65536),
    socket           TEXT CHECK (socket <> ''),
    version          TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    CHECK (NOT (address IS NOT NULL AND socket IS NOT NULL)),
    CHECK ((service_type = 'external') = (external_group <> ''))
);
CREATE INDEX services_node ON services (node_id, service_id);
CREATE INDEX services_type ON services (service_type, service_id);

CREATE TABLE agents (
    agent_id           TEXT PRIMARY KEY,
    agent_type         TEXT NOT NULL CHECK (agent_type <> ''),
    runs_on_node_id    TEXT,
    pmm_agent_id       TEXT,
    node_id            TEXT,
    service_id         TEXT,
    custom_labels      JSONB,
    disabled           BOOLEAN NOT NULL DEFAULT FALSE,
    status             TEXT NOT NULL DEFAULT '',
    connected          BOOLEAN NOT NULL DEFAULT FALSE,
    listen_port        INTEGER,
    version            TEXT,
    process_exec_path  TEXT,
    username           TEXT,
    log_level          TEXT,
    push_metrics       BOOLEAN NOT NULL DEFAULT FALSE,
    -- The whole agent with every secret redacted (read views expose is_*_set from it).
    details            JSONB NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    CHECK ((runs_on_node_id IS NULL) <> (pmm_agent_id IS NULL))
);
CREATE INDEX agents_pmm_agent ON agents (pmm_agent_id, agent_id);
CREATE INDEX agents_node ON agents (node_id, agent_id);
CREATE INDEX agents_service ON agents (service_id, agent_id);
CREATE INDEX agents_type ON agents (agent_type, agent_id);

-- One row, like PMM's: the stored settings document (explicit choices only).
CREATE TABLE settings (
    id        BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    settings  JSONB NOT NULL
);
INSERT INTO settings (id, settings) VALUES (TRUE, '{}');
