-- tollgate agent database, version 2: the price table tollgate charges by, as imported versions.
--
-- A price table is imported whole (`tollgate prices import`, from LiteLLM's price map) and becomes
-- a new version; the newest version is the active one. Versions are never changed or deleted
-- (triggers below), so a usage row's metadata can name the version it was priced by and that
-- version can be read back exactly later. With no version imported, the agent charges by the
-- built-in table compiled into the binary (agent/src/prices/builtin.rs).
--
-- Conventions (as in V1): times are TEXT, RFC 3339 UTC with milliseconds. Prices are USD per
-- token as exact decimal TEXT (e.g. '0.00000015'): never REAL, so a price reads back byte for
-- byte as it was imported. Only agent/src/ledger touches these tables.

-- ---------------------------------------------------------------------------------------------
-- price_tables: one row per imported version. `version` counts up from 1 (max + 1 on import).
-- `sha256` is the hex SHA-256 of the imported file's bytes: importing the same file as the newest
-- version again is a no-op that returns that version. `model_count` = the version's rows in
-- model_prices.
CREATE TABLE price_tables (
    version      INTEGER PRIMARY KEY CHECK (version >= 1),
    source       TEXT    NOT NULL CHECK (length(source) BETWEEN 1 AND 1024),   -- the file as named on import
    sha256       TEXT    NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    model_count  INTEGER NOT NULL CHECK (model_count >= 1),
    imported_at  TEXT    NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- model_prices: one row per (version, model).
-- * provider: the normalized provider (openai, anthropic, openrouter, google, cohere, together,
--   anyscale, deepinfra), or LiteLLM's own provider name when it maps to none of these.
-- * mode: what the model is billed for; only these three are imported.
-- * input_usd_per_token / output_usd_per_token: exact decimal text, >= 0 (an embedding's output
--   price is '0').
-- * max_output_tokens: the provider's output limit, NULL when the file gives none.
-- * quality_score: 0-100 for alias routing (auto / eco / balanced / precision), taken from the
--   built-in table for the same model name at import; NULL = not eligible for aliases.
CREATE TABLE model_prices (
    version               INTEGER NOT NULL REFERENCES price_tables (version),
    model                 TEXT    NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    provider              TEXT    NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    mode                  TEXT    NOT NULL CHECK (mode IN ('chat', 'completion', 'embedding')),
    input_usd_per_token   TEXT    NOT NULL,
    output_usd_per_token  TEXT    NOT NULL,
    max_output_tokens     INTEGER CHECK (max_output_tokens IS NULL OR max_output_tokens >= 0),
    quality_score         INTEGER CHECK (quality_score IS NULL OR quality_score BETWEEN 0 AND 100),
    PRIMARY KEY (version, model)
) WITHOUT ROWID;

-- Imported versions are history: a correction is a new import, never an edit.
CREATE TRIGGER price_tables_no_update BEFORE UPDATE ON price_tables
BEGIN
    SELECT RAISE(ABORT, 'price_tables is append-only: import a new version instead');
END;
CREATE TRIGGER price_tables_no_delete BEFORE DELETE ON price_tables
BEGIN
    SELECT RAISE(ABORT, 'price_tables is append-only: import a new version instead');
END;
CREATE TRIGGER model_prices_no_update BEFORE UPDATE ON model_prices
BEGIN
    SELECT RAISE(ABORT, 'model_prices is append-only: import a new version instead');
END;
CREATE TRIGGER model_prices_no_delete BEFORE DELETE ON model_prices
BEGIN
    SELECT RAISE(ABORT, 'model_prices is append-only: import a new version instead');
END;
