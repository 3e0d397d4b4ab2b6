//! Imported price tables in SQLite (being written).
