//! Usage reports over llm_usage_log (being written).
