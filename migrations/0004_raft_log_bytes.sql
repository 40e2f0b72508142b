-- Raft log entries are kept as the bytes of their JSON: PostgreSQL never looks inside them,
-- and jsonb cost a parse (and a re-encoding) of every entry on every append.
ALTER TABLE raft_log ALTER COLUMN entry TYPE bytea USING convert_to(entry::text, 'UTF8');
