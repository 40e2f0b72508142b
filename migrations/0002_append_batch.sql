-- One batch appended in one round trip: the base check, the events, the command results, the
-- query-table rows of the entities the batch touched and the new head, as a single statement
-- (so a single transaction). Group commit spends its time in PostgreSQL, not on the wire.
--
-- Returns the head position found. It equals `base` when the batch was appended; any other
-- value (NULL: no head row) means the base was stale and nothing was written. A batch that does
-- not chain on the stored head hash is refused with SQLSTATE PM001 (the writer's head is wrong).
-- Command results cover every decided command: appended ones with positions, the others with
-- NULL positions and their rejection (NULL for a command that changed nothing). Under Raft,
-- `applied` (and `membership`) record the log entry the batch came from (migration 0003).
CREATE FUNCTION append_batch(
    base           BIGINT,
    new_position   BIGINT,
    new_hash       BYTEA,
    e_position     BIGINT[],
    e_stream_id    TEXT[],
    e_version      BIGINT[],
    e_event_id     UUID[],
    e_type         TEXT[],
    e_schema       INTEGER[],
    e_payload      TEXT[],
    e_metadata     TEXT[],
    e_recorded_at  TIMESTAMPTZ,
    e_prev_hash    BYTEA[],
    e_hash         BYTEA[],
    c_command_id   TEXT[],
    c_first        BIGINT[],
    c_last         BIGINT[],
    c_rejection    TEXT[],
    node_ids       TEXT[],
    node_rows      JSONB,
    service_ids    TEXT[],
    service_rows   JSONB,
    agent_ids      TEXT[],
    agent_rows     JSONB,
    settings_doc   JSONB,
    applied        JSONB,
    membership     JSONB
) RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    actual      BIGINT;
    actual_hash BYTEA;
BEGIN
    SELECT position, hash INTO actual, actual_hash FROM log_head FOR UPDATE;
    IF NOT FOUND OR actual IS DISTINCT FROM base THEN
        RETURN actual;
    END IF;
    IF cardinality(e_prev_hash) > 0 AND e_prev_hash[1] IS DISTINCT FROM actual_hash THEN
        RAISE EXCEPTION 'the batch does not chain on the log head at position %', actual
            USING ERRCODE = 'PM001';
    END IF;

    INSERT INTO events (position, stream_id, stream_version, event_id, event_type, schema_version,
                        payload, metadata, recorded_at, prev_hash, hash)
    SELECT p, s, v, e, t, sv, pl::jsonb, md::jsonb, e_recorded_at, ph, h
    FROM UNNEST(e_position, e_stream_id, e_version, e_event_id, e_type, e_schema, e_payload,
                e_metadata, e_prev_hash, e_hash) AS u(p, s, v, e, t, sv, pl, md, ph, h);

    INSERT INTO command_results (command_id, first_position, last_position, rejection)
    SELECT id, f, l, r::jsonb FROM UNNEST(c_command_id, c_first, c_last, c_rejection) AS u(id, f, l, r);

    -- Touched rows that may exist are deleted, then the touched entities that exist are inserted (in this order, so
    -- a name freed and taken in the same batch does not collide). The deletes are planned per
    -- call (EXECUTE): a cached generic plan, made while a table was small, would go on scanning
    -- it whole as it grows.
    IF cardinality(node_ids) > 0 THEN
        EXECUTE 'DELETE FROM nodes WHERE node_id = ANY ($1)' USING node_ids;
    END IF;
    INSERT INTO nodes SELECT * FROM jsonb_populate_recordset(NULL::nodes, node_rows);
    IF cardinality(service_ids) > 0 THEN
        EXECUTE 'DELETE FROM services WHERE service_id = ANY ($1)' USING service_ids;
    END IF;
    INSERT INTO services SELECT * FROM jsonb_populate_recordset(NULL::services, service_rows);
    IF cardinality(agent_ids) > 0 THEN
        EXECUTE 'DELETE FROM agents WHERE agent_id = ANY ($1)' USING agent_ids;
    END IF;
    INSERT INTO agents SELECT * FROM jsonb_populate_recordset(NULL::agents, agent_rows);
    IF settings_doc IS NOT NULL THEN
        UPDATE settings SET settings = settings_doc;
    END IF;

    -- Under Raft: the entry this batch came from, and the membership, in the same transaction.
    IF applied IS NOT NULL THEN
        UPDATE raft_state SET last_applied = applied, membership = coalesce(append_batch.membership, raft_state.membership);
    END IF;

    -- A batch without events (only rejections and no-ops) leaves the head as it is.
    IF new_position <> base THEN
        UPDATE log_head SET position = new_position, hash = new_hash;
    END IF;
    RETURN actual;
END
$$;
