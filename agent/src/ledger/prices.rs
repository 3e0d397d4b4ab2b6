//! Price tables in SQLite (`price_tables`, `model_prices`, `price_aliases`; see V2__prices.sql and
//! V4__price_dimensions.sql).
//!
//! Guarantees:
//! - Storing a version is one `BEGIN IMMEDIATE` transaction: every model and alias of the new
//!   version or none, and bad input (a bad source, hash, model or alias, a duplicate or an empty
//!   list) writes nothing.
//! - Versions count up from 1 and are never changed (append-only triggers); the newest is the
//!   active table. `prices set`, `prices alias` and `prices use` store a new version too (a copy
//!   with the change), so every version a usage row names can be read back as it was. Storing
//!   content whose SHA-256 equals the newest version's is a no-op that returns that version with
//!   `unchanged: true`.
//! - Prices are stored and read back as exact decimal text, never a float; the dimensions beyond
//!   input and output as JSON of decimal strings.

use std::collections::BTreeMap;
use std::str::FromStr;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Ledger, LedgerError};
use crate::prices::{
    MODEL_NAME_LEN_MAX, ModelMode, ModelPrice, PRICE_MODELS_MAX, PROVIDER_LEN_MAX, PriceDims,
    PriceTable, USD_PER_TOKEN_MAX, USD_PER_UNIT_MAX,
};

/// Longest `source` recorded with a version (the file as named, or the command that made it).
pub const PRICE_SOURCE_LEN_MAX: usize = 1024;
/// Most aliases one version holds.
pub const PRICE_ALIASES_MAX: usize = 10_000;

/// How a price table version was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceOrigin {
    /// `tollgate prices import FILE`.
    Import,
    /// `tollgate prices set MODEL …`.
    Set,
    /// `tollgate prices alias NAME MODEL`.
    Alias,
    /// `tollgate prices use VERSION` (a copy of an earlier version, or of the built-in table).
    Use,
}

impl PriceOrigin {
    pub const fn as_str(self) -> &'static str {
        match self {
            PriceOrigin::Import => "import",
            PriceOrigin::Set => "set",
            PriceOrigin::Alias => "alias",
            PriceOrigin::Use => "use",
        }
    }

    fn parse(text: &str) -> Option<PriceOrigin> {
        [
            PriceOrigin::Import,
            PriceOrigin::Set,
            PriceOrigin::Alias,
            PriceOrigin::Use,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// What storing a version did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceImport {
    /// The version now active.
    pub version: i64,
    /// Models in that version.
    pub model_count: u64,
    /// True when the content was the newest version's already: nothing was written.
    pub unchanged: bool,
    pub sha256: String,
    pub imported_at: String,
}

/// One stored version, as `tollgate prices versions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceVersion {
    pub version: i64,
    pub origin: PriceOrigin,
    pub source: String,
    pub sha256: String,
    pub model_count: u64,
    pub alias_count: u64,
    pub imported_at: String,
    /// Whether this is the newest version, the one the gateway charges by.
    pub active: bool,
}

/// A new version to store.
#[derive(Debug, Clone, Copy)]
pub struct NewPriceVersion<'a> {
    pub origin: PriceOrigin,
    /// The file as named, or the command that made it.
    pub source: &'a str,
    /// SHA-256 (hex) of the file, or of the content for a hand-made version.
    pub sha256_hex: &'a str,
    pub models: &'a [ModelPrice],
    pub aliases: &'a BTreeMap<String, String>,
}

/// The version string of stored version `version`, as [`PriceTable::version`] carries it.
pub fn imported_version_label(version: i64) -> String {
    format!("imported-{version}")
}

/// SHA-256 (hex) of a table's content, for versions made by hand: the same models and aliases
/// always hash the same.
pub fn content_sha256(models: &[ModelPrice], aliases: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&ModelPrice> = models.iter().collect();
    sorted.sort_by(|a, b| a.model.cmp(&b.model));
    let text = serde_json::to_vec(&(sorted, aliases)).unwrap_or_default();
    hex::encode(Sha256::digest(text))
}

impl Ledger {
    /// Stores `models` imported from a file as a new version (newest = max + 1), or, when
    /// `sha256_hex` equals the newest version's, returns that version unchanged.
    pub fn import_prices(
        &mut self,
        source: &str,
        sha256_hex: &str,
        models: &[ModelPrice],
    ) -> Result<PriceImport, LedgerError> {
        self.store_price_version(&NewPriceVersion {
            origin: PriceOrigin::Import,
            source,
            sha256_hex,
            models,
            aliases: &BTreeMap::new(),
        })
    }

    /// Stores a new price table version (see [`NewPriceVersion`]).
    pub fn store_price_version(
        &mut self,
        new: &NewPriceVersion<'_>,
    ) -> Result<PriceImport, LedgerError> {
        check_import(new.source, new.sha256_hex, new.models)?;
        check_aliases(new.models, new.aliases)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let latest: Option<(i64, String, i64, String)> = tx
            .prepare_cached(
                "SELECT version, sha256, model_count, imported_at FROM price_tables \
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        if let Some((version, sha256, count, imported_at)) = &latest
            && sha256 == new.sha256_hex
        {
            return Ok(PriceImport {
                version: *version,
                model_count: u64::try_from(*count)
                    .map_err(|_| LedgerError::Corrupt(format!("model_count {count}")))?,
                unchanged: true,
                sha256: sha256.clone(),
                imported_at: imported_at.clone(),
            });
        }
        let version = latest
            .map_or(Some(1), |(v, ..)| v.checked_add(1))
            .ok_or_else(|| LedgerError::Corrupt("price table versions have run out".to_owned()))?;
        let imported_at = super::clock::to_text(self.clock.now());
        let count = new.models.len();
        tx.prepare_cached(
            "INSERT INTO price_tables (version, source, sha256, model_count, imported_at, origin) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            version,
            new.source,
            new.sha256_hex,
            i64::try_from(count).unwrap_or(i64::MAX),
            imported_at,
            new.origin.as_str(),
        ])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO model_prices (version, model, provider, mode, input_usd_per_token, \
                 output_usd_per_token, max_output_tokens, quality_score, dimensions) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for m in new.models {
                let dims = if m.dims.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&m.dims).map_err(|e| {
                        LedgerError::Corrupt(format!("prices of {:?}: {e}", m.model))
                    })?)
                };
                insert.execute(params![
                    version,
                    m.model,
                    m.provider,
                    m.mode.as_str(),
                    m.input_usd_per_token.normalize().to_string(),
                    m.output_usd_per_token.normalize().to_string(),
                    m.max_output_tokens,
                    m.quality_score,
                    dims,
                ])?;
            }
            let mut alias = tx.prepare_cached(
                "INSERT INTO price_aliases (version, alias, model) VALUES (?1, ?2, ?3)",
            )?;
            for (name, model) in new.aliases {
                alias.execute(params![version, name, model])?;
            }
        }
        tx.commit()?;
        Ok(PriceImport {
            version,
            model_count: u64::try_from(count).unwrap_or(u64::MAX),
            unchanged: false,
            sha256: new.sha256_hex.to_owned(),
            imported_at,
        })
    }

    /// The newest price table, its version string `"imported-<n>"`; `None` when no table was
    /// ever stored (the caller then charges by [`PriceTable::builtin`]).
    pub fn price_table(&self) -> Result<Option<PriceTable>, LedgerError> {
        match self.price_table_version()? {
            Some(version) => self.price_table_at(version),
            None => Ok(None),
        }
    }

    /// Stored version `version`, or `None` if there is no such version.
    pub fn price_table_at(&self, version: i64) -> Result<Option<PriceTable>, LedgerError> {
        // A version's rows never change once committed (triggers), so reading them needs no
        // enclosing transaction.
        let exists: Option<i64> = self
            .conn()
            .prepare_cached("SELECT version FROM price_tables WHERE version = ?1")?
            .query_row([version], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut stmt = self.conn().prepare_cached(
            "SELECT model, provider, mode, input_usd_per_token, output_usd_per_token, \
             max_output_tokens, quality_score, dimensions FROM model_prices WHERE version = ?1 \
             ORDER BY model",
        )?;
        let rows = stmt.query_map([version], |r| {
            Ok(StoredPrice {
                model: r.get("model")?,
                provider: r.get("provider")?,
                mode: r.get("mode")?,
                input: r.get("input_usd_per_token")?,
                output: r.get("output_usd_per_token")?,
                max_output_tokens: r.get("max_output_tokens")?,
                quality_score: r.get("quality_score")?,
                dimensions: r.get("dimensions")?,
            })
        })?;
        let mut models = Vec::new();
        for row in rows {
            models.push(row?.into_price(version)?);
        }
        let mut aliases = BTreeMap::new();
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT alias, model FROM price_aliases WHERE version = ?1")?;
        for row in stmt.query_map([version], |r| {
            Ok((r.get::<_, String>("alias")?, r.get::<_, String>("model")?))
        })? {
            let (alias, model) = row?;
            aliases.insert(alias, model);
        }
        Ok(Some(
            PriceTable::from_models(imported_version_label(version), models).with_aliases(aliases),
        ))
    }

    /// The newest stored version's number, `None` if none: one indexed read, for a gateway that
    /// polls for a new version and reloads [`Ledger::price_table`] when it changes.
    pub fn price_table_version(&self) -> Result<Option<i64>, LedgerError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT MAX(version) FROM price_tables")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?)
    }

    /// Every stored version, newest first.
    pub fn price_versions(&self) -> Result<Vec<PriceVersion>, LedgerError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT t.version, t.origin, t.source, t.sha256, t.model_count, t.imported_at, \
             (SELECT COUNT(*) FROM price_aliases a WHERE a.version = t.version) AS alias_count \
             FROM price_tables t ORDER BY t.version DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>("version")?,
                r.get::<_, String>("origin")?,
                r.get::<_, String>("source")?,
                r.get::<_, String>("sha256")?,
                r.get::<_, i64>("model_count")?,
                r.get::<_, String>("imported_at")?,
                r.get::<_, i64>("alias_count")?,
            ))
        })?;
        let mut versions = Vec::new();
        for row in rows {
            let (version, origin, source, sha256, models, imported_at, aliases) = row?;
            versions.push(PriceVersion {
                version,
                origin: PriceOrigin::parse(&origin).ok_or_else(|| {
                    LedgerError::Corrupt(format!("price table {version} has origin {origin:?}"))
                })?,
                source,
                sha256,
                model_count: u64::try_from(models).unwrap_or(0),
                alias_count: u64::try_from(aliases).unwrap_or(0),
                imported_at,
                active: versions.is_empty(),
            });
        }
        Ok(versions)
    }
}

/// A `model_prices` row as stored.
struct StoredPrice {
    model: String,
    provider: String,
    mode: String,
    input: String,
    output: String,
    max_output_tokens: Option<u32>,
    quality_score: Option<u8>,
    dimensions: Option<String>,
}

impl StoredPrice {
    fn into_price(self, version: i64) -> Result<ModelPrice, LedgerError> {
        let model = self.model;
        let corrupt = |what: &str, e: String| {
            LedgerError::Corrupt(format!(
                "{what} of model {model:?} in price table {version}: {e}"
            ))
        };
        let mode = ModelMode::from_str(&self.mode).map_err(|e| corrupt("mode", e))?;
        let input = Decimal::from_str_exact(&self.input)
            .map_err(|e| corrupt("input_usd_per_token", e.to_string()))?;
        let output = Decimal::from_str_exact(&self.output)
            .map_err(|e| corrupt("output_usd_per_token", e.to_string()))?;
        let dims = match self.dimensions {
            None => PriceDims::default(),
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| corrupt("dimensions", e.to_string()))?
            }
        };
        Ok(ModelPrice {
            model,
            provider: self.provider,
            mode,
            input_usd_per_token: input,
            output_usd_per_token: output,
            max_output_tokens: self.max_output_tokens,
            quality_score: self.quality_score,
            dims,
        })
    }
}

/// Refuses aliases that are not names, shadow a model, or name no model of the version.
fn check_aliases(
    models: &[ModelPrice],
    aliases: &BTreeMap<String, String>,
) -> Result<(), LedgerError> {
    let invalid = |why: String| LedgerError::InvalidField {
        field: "price alias",
        why,
    };
    if aliases.len() > PRICE_ALIASES_MAX {
        return Err(invalid(format!(
            "{} aliases, the limit is {PRICE_ALIASES_MAX}",
            aliases.len()
        )));
    }
    for (alias, model) in aliases {
        if alias.trim().is_empty()
            || alias.chars().count() > MODEL_NAME_LEN_MAX
            || alias.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "{alias:?} must be 1 to {MODEL_NAME_LEN_MAX} printable characters"
            )));
        }
        if models.iter().any(|m| &m.model == alias) {
            return Err(invalid(format!(
                "{alias:?} is a model of the table itself; an alias must be a new name"
            )));
        }
        if !models.iter().any(|m| &m.model == model) {
            return Err(invalid(format!(
                "{alias:?} names {model:?}, which is not a model of the table"
            )));
        }
    }
    Ok(())
}

/// Refuses an import that would store anything the tables' meaning does not allow, naming it.
fn check_import(source: &str, sha256_hex: &str, models: &[ModelPrice]) -> Result<(), LedgerError> {
    let invalid = |field: &'static str, why: String| LedgerError::InvalidField { field, why };
    if source.is_empty()
        || source.chars().count() > PRICE_SOURCE_LEN_MAX
        || source.chars().any(char::is_control)
    {
        return Err(invalid(
            "price source",
            format!("it must be 1 to {PRICE_SOURCE_LEN_MAX} printable characters"),
        ));
    }
    if sha256_hex.len() != 64
        || !sha256_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            "price file sha256",
            format!("{sha256_hex:?} is not 64 lowercase hex digits"),
        ));
    }
    if models.is_empty() {
        return Err(invalid(
            "price table",
            "it has no models; an empty table would price nothing".to_owned(),
        ));
    }
    if models.len() > PRICE_MODELS_MAX {
        return Err(invalid(
            "price table",
            format!("{} models, the limit is {PRICE_MODELS_MAX}", models.len()),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(models.len());
    for m in models {
        let name = &m.model;
        if name.trim().is_empty()
            || name.chars().count() > MODEL_NAME_LEN_MAX
            || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "model name",
                format!("{name:?} must be 1 to {MODEL_NAME_LEN_MAX} printable characters"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid(
                "price table",
                format!("model {name:?} is listed twice"),
            ));
        }
        if m.provider.trim().is_empty()
            || m.provider.chars().count() > PROVIDER_LEN_MAX
            || m.provider.chars().any(char::is_control)
        {
            return Err(invalid(
                "provider",
                format!(
                    "{:?} of model {name:?} must be 1 to {PROVIDER_LEN_MAX} printable characters",
                    m.provider
                ),
            ));
        }
        for (field, price) in [
            ("input price", m.input_usd_per_token),
            ("output price", m.output_usd_per_token),
        ] {
            if price.is_sign_negative() && !price.is_zero() || price > USD_PER_TOKEN_MAX {
                return Err(invalid(
                    field,
                    format!(
                        "{price} USD per token for model {name:?} is outside 0 to {USD_PER_TOKEN_MAX}"
                    ),
                ));
            }
        }
        for (field, price) in m.dims.token_prices() {
            if price.is_sign_negative() && !price.is_zero() || price > USD_PER_TOKEN_MAX {
                return Err(invalid(
                    field,
                    format!(
                        "{price} USD per token for model {name:?} is outside 0 to {USD_PER_TOKEN_MAX}"
                    ),
                ));
            }
        }
        for (field, price) in m.dims.unit_prices() {
            if price.is_sign_negative() && !price.is_zero() || price > USD_PER_UNIT_MAX {
                return Err(invalid(
                    field,
                    format!("{price} USD for model {name:?} is outside 0 to {USD_PER_UNIT_MAX}"),
                ));
            }
        }
        if let Some(q) = m.quality_score
            && q > 100
        {
            return Err(invalid(
                "quality score",
                format!("{q} for model {name:?} is outside 0 to 100"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::{OpenMode, SystemClock};

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(
            &dir.path().join("t.db"),
            OpenMode::CreateIfMissing,
            Arc::new(SystemClock),
        )
        .unwrap();
        (dir, ledger)
    }

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn count(ledger: &Ledger, table: &str) -> i64 {
        ledger
            .conn()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn imports_version_up_and_read_back_exactly() {
        let (_dir, mut ledger) = ledger();
        assert_eq!(ledger.price_table_version().unwrap(), None);
        assert_eq!(ledger.price_table().unwrap(), None);
        let mut models = crate::prices::builtin::models();
        models[0].input_usd_per_token = Decimal::from_str_exact("0.000000123456789").unwrap();
        let first = ledger.import_prices("a.json", SHA_A, &models).unwrap();
        assert_eq!(
            (first.version, first.model_count, first.unchanged),
            (1, 15, false)
        );
        let table = ledger.price_table().unwrap().unwrap();
        assert_eq!(table.version, "imported-1");
        let expected = PriceTable::from_models("imported-1".into(), models.clone());
        assert_eq!(table, expected);
        assert_eq!(
            table
                .get(&models[0].model)
                .unwrap()
                .input_usd_per_token
                .to_string(),
            "0.000000123456789"
        );

        let again = ledger
            .import_prices("other-name.json", SHA_A, &models[..3])
            .unwrap();
        assert_eq!(
            (again.version, again.model_count, again.unchanged),
            (1, 15, true)
        );
        assert_eq!(again.imported_at, first.imported_at);
        assert_eq!(count(&ledger, "model_prices"), 15);

        let second = ledger.import_prices("b.json", SHA_B, &models[..2]).unwrap();
        assert_eq!(
            (second.version, second.model_count, second.unchanged),
            (2, 2, false)
        );
        assert_eq!(ledger.price_table_version().unwrap(), Some(2));
        assert_eq!(ledger.price_table().unwrap().unwrap().len(), 2);
        // Back to the first file: a new version, since it is not the newest.
        assert_eq!(
            ledger
                .import_prices("a.json", SHA_A, &models)
                .unwrap()
                .version,
            3
        );
    }

    #[test]
    fn bad_imports_write_nothing_and_name_the_problem() {
        let (_dir, mut ledger) = ledger();
        let models = crate::prices::builtin::models();
        let mut twice = models.clone();
        twice.push(models[0].clone());
        let mut negative = models.clone();
        negative[1].output_usd_per_token = Decimal::from_str_exact("-0.1").unwrap();
        let mut quality = models.clone();
        quality[2].quality_score = Some(101);
        let mut nameless = models.clone();
        nameless[3].model = String::new();
        let cases: Vec<(&str, &str, &[ModelPrice], &str)> = vec![
            ("", SHA_A, &models, "invalid price source"),
            (
                "a.json",
                "ABC",
                &models,
                "invalid price file sha256: \"ABC\" is not 64",
            ),
            (
                "a.json",
                &SHA_A[1..],
                &models,
                "is not 64 lowercase hex digits",
            ),
            (
                "a.json",
                SHA_A,
                &[],
                "invalid price table: it has no models",
            ),
            (
                "a.json",
                SHA_A,
                &twice,
                "model \"gpt-4o-mini\" is listed twice",
            ),
            (
                "a.json",
                SHA_A,
                &negative,
                "invalid output price: -0.1 USD per token for model \"gpt-4o\"",
            ),
            (
                "a.json",
                SHA_A,
                &quality,
                "invalid quality score: 101 for model \"gpt-4.1\"",
            ),
            ("a.json", SHA_A, &nameless, "invalid model name"),
        ];
        for (source, sha, models, expected) in cases {
            let err = ledger
                .import_prices(source, sha, models)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}\n  want: {expected}");
        }
        assert_eq!(count(&ledger, "price_tables"), 0);
        assert_eq!(count(&ledger, "model_prices"), 0);
    }

    #[test]
    fn imported_versions_cannot_be_edited() {
        let (_dir, mut ledger) = ledger();
        ledger
            .import_prices("a.json", SHA_A, &crate::prices::builtin::models())
            .unwrap();
        for sql in [
            "UPDATE price_tables SET source = 'x'",
            "DELETE FROM price_tables",
            "UPDATE model_prices SET input_usd_per_token = '0'",
            "DELETE FROM model_prices",
        ] {
            let err = ledger.conn().execute(sql, []).unwrap_err().to_string();
            assert!(err.contains("append-only"), "{sql}: {err}");
        }
    }
}
