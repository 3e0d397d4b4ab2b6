//! A mock LLM provider speaking OpenAI's API (placeholder; being written).
