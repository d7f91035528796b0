-- Keys imported from another system (`latchkey import`). `lookup` is `<scheme>:<key>`, the key
-- being the digest the verify path finds the row by (lowercase hex) or the UUID embedded in the
-- token; NULL for native tokens. Unique, so a re-import of the same hash is recognised, and
-- partial, so native tokens cost the index nothing. Collated "C" so that a scheme's keys are
-- one byte-ordered range of the index (`lookup >= 'sha256:' AND lookup < 'sha256;'`).
ALTER TABLE tokens ADD COLUMN lookup text COLLATE "C";

CREATE UNIQUE INDEX tokens_lookup ON tokens (lookup) WHERE lookup IS NOT NULL;
