-- tollgate agent database, version 4: every price dimension, the Responses mode, aliases, and
-- price table versions made by hand.
--
-- * model_prices gains `dimensions`: the prices beyond plain input and output tokens that
--   LiteLLM's map carries and usage reports (cached reads, cache writes, audio, images,
--   reasoning, long-context tiers, per-request and search fees), as JSON whose numbers are exact
--   decimal strings (agent/src/prices/mod.rs `PriceDims`); NULL = none. Its mode may now be
--   'responses' (models LiteLLM serves only through OpenAI's Responses API). SQLite cannot alter
--   a CHECK, so the table is rebuilt with its rows; its append-only triggers come back with it.
-- * price_aliases: `tollgate prices alias NAME MODEL` — within a version, NAME is charged as
--   MODEL of the same version.
-- * price_tables.origin says how a version was made: 'import' (a LiteLLM price file), 'set' (a
--   model's prices changed by hand), 'alias' (an alias added), 'use' (an earlier version or the
--   built-in table made active again: a copy, so history is never rewritten). The newest version
--   is always the active one.
--
-- Conventions as in V2: prices are exact decimal TEXT, never REAL; versions are history.

CREATE TABLE model_prices_v4 (
    version               INTEGER NOT NULL REFERENCES price_tables (version),
    model                 TEXT    NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    provider              TEXT    NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    mode                  TEXT    NOT NULL
                          CHECK (mode IN ('chat', 'completion', 'embedding', 'responses')),
    input_usd_per_token   TEXT    NOT NULL,
    output_usd_per_token  TEXT    NOT NULL,
    max_output_tokens     INTEGER CHECK (max_output_tokens IS NULL OR max_output_tokens >= 0),
    quality_score         INTEGER CHECK (quality_score IS NULL OR quality_score BETWEEN 0 AND 100),
    dimensions            TEXT    CHECK (dimensions IS NULL OR json_valid(dimensions)),
    PRIMARY KEY (version, model)
) WITHOUT ROWID;

INSERT INTO model_prices_v4 (version, model, provider, mode, input_usd_per_token,
                             output_usd_per_token, max_output_tokens, quality_score, dimensions)
SELECT version, model, provider, mode, input_usd_per_token, output_usd_per_token,
       max_output_tokens, quality_score, NULL
FROM model_prices;

-- Dropping a table fires no DELETE trigger; its own triggers go with it.
DROP TABLE model_prices;
ALTER TABLE model_prices_v4 RENAME TO model_prices;

CREATE TRIGGER model_prices_no_update BEFORE UPDATE ON model_prices
BEGIN
    SELECT RAISE(ABORT, 'model_prices is append-only: make a new price table version instead');
END;
CREATE TRIGGER model_prices_no_delete BEFORE DELETE ON model_prices
BEGIN
    SELECT RAISE(ABORT, 'model_prices is append-only: make a new price table version instead');
END;

-- ---------------------------------------------------------------------------------------------
-- price_aliases: one row per (version, alias). The model must be one of the same version.
CREATE TABLE price_aliases (
    version  INTEGER NOT NULL REFERENCES price_tables (version),
    alias    TEXT    NOT NULL CHECK (length(alias) BETWEEN 1 AND 200),
    model    TEXT    NOT NULL,
    PRIMARY KEY (version, alias),
    FOREIGN KEY (version, model) REFERENCES model_prices (version, model)
) WITHOUT ROWID;

CREATE TRIGGER price_aliases_no_update BEFORE UPDATE ON price_aliases
BEGIN
    SELECT RAISE(ABORT, 'price_aliases is append-only: make a new price table version instead');
END;
CREATE TRIGGER price_aliases_no_delete BEFORE DELETE ON price_aliases
BEGIN
    SELECT RAISE(ABORT, 'price_aliases is append-only: make a new price table version instead');
END;

ALTER TABLE price_tables ADD COLUMN origin TEXT NOT NULL DEFAULT 'import'
    CHECK (origin IN ('import', 'set', 'alias', 'use'));
