//! The price table tollgate charges by (being written).
