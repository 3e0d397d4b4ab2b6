//! OpenAI's wire shapes, as far as the mock reads and writes them.
//!
//! Requests are parsed straight from the body bytes, borrowing strings where the JSON has no
//! escapes, so the hot path allocates little. Only the fields the mock uses are read; unknown
//! fields are ignored, as a provider would. A missing required field (`model`, `messages`,
//! `prompt`, `input`) or a wrong type is a parse error, which the handlers turn into a 400.
//! Responses are plain `Serialize` structs whose field order matches OpenAI's.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::scenario::Usage;

/// `created` of every object the mock returns: fixed, for deterministic bodies.
pub const CREATED: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Requests

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub messages: Vec<Message<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
}

/// One chat message; only its text matters to the mock.
#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    /// `null` or absent (an assistant message with tool calls) counts as no text.
    #[serde(default, borrow)]
    pub content: Option<Content<'a>>,
}

impl Message<'_> {
    /// The message's text pieces: the string content, or each `{"type":"text"}` part.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.content.iter().flat_map(|c| c.0.iter())
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub prompt: Strings<'a>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub input: Strings<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Include the usage chunk in a stream?
pub fn include_usage(options: Option<&StreamOptions>) -> bool {
    options.and_then(|o| o.include_usage).unwrap_or(false)
}

/// Text pieces: one string, or several.
#[derive(Debug)]
pub enum Texts<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl Texts<'_> {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Texts::One(text) => (Some(text.as_ref()), &[][..]),
            Texts::Many(texts) => (None, texts.as_slice()),
        };
        one.into_iter().chain(many.iter().map(|t| t.as_ref()))
    }

    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }
}

/// A chat `content`: a string, or an array of parts of which `{"type":"text","text":..}` count.
#[derive(Debug)]
pub struct Content<'a>(pub Texts<'a>);

/// A `prompt` or `input`: a string or an array of strings.
#[derive(Debug)]
pub struct Strings<'a>(pub Texts<'a>);

/// A string that borrows from the body when it can.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor).map(Text)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// One element of a content array. Parts of other types (images, audio) are read and dropped.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Texts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Texts::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Texts::One(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Texts::One(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut texts = Vec::new();
                while let Some(part) = seq.next_element::<Part<'de>>()? {
                    if part.kind == "text"
                        && let Some(text) = part.text
                    {
                        texts.push(text);
                    }
                }
                Ok(Texts::Many(texts))
            }
        }
        deserializer.deserialize_any(ContentVisitor).map(Content)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Strings<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Texts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Texts::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Texts::One(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Texts::One(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut texts = Vec::new();
                while let Some(Text(text)) = seq.next_element::<Text<'de>>()? {
                    texts.push(text);
                }
                Ok(Texts::Many(texts))
            }
        }
        deserializer.deserialize_any(StringsVisitor).map(Strings)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// An id `<prefix><seq>` written without an intermediate `String`.
#[derive(Debug, Clone, Copy)]
pub struct SeqId {
    pub prefix: &'static str,
    pub seq: u64,
}

impl Serialize for SeqId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}{}", self.prefix, self.seq))
    }
}

/// One reply word as a stream delta: the word, then a space unless it is the reply's last.
/// Concatenating a stream's deltas gives exactly the non-streaming reply text.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    /// The number of the first reply word in this piece.
    pub first: u64,
    /// How many words (0: an empty piece).
    pub count: u64,
    /// Whether a space follows (every piece but the last).
    pub space: bool,
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = String::new();
        for i in 0..self.count {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(crate::scenario::word(self.first.saturating_add(i)));
        }
        if self.space {
            text.push(' ');
        }
        serializer.serialize_str(&text)
    }
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: SeqId,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [ChatChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: SeqId,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: &'a [ChatChunkChoice],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
}

/// A chat stream delta; absent fields are omitted (`{}` for the finish chunk).
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Token>,
}

/// A legacy text completion, and also one of its stream chunks (same object name and shape).
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a, T: Serialize> {
    pub id: SeqId,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: &'a [TextChoice<T>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct TextChoice<T: Serialize> {
    pub text: T,
    pub index: u32,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingList<'a> {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<EmbeddingUsage>,
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: [f64; 8],
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: [Model; 4],
}

#[derive(Debug, Serialize)]
pub struct Model {
    pub id: &'static str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

/// `GET /v1/models` for the names the mock was configured to serve.
pub fn model_list(names: &[String]) -> serde_json::Value {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|id| {
            serde_json::json!({"id": id, "object": "model", "created": CREATED,
                "owned_by": "mock-upstream"})
        })
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

/// The models `GET /v1/models` lists. Any model name is accepted by the other routes.
pub fn models() -> ModelList {
    let model = |id| Model {
        id,
        object: "model",
        created: CREATED,
        owned_by: "mock-upstream",
    };
    ModelList {
        object: "list",
        data: [
            model("gpt-4o-mini"),
            model("gpt-4o"),
            model("claude-sonnet-4"),
            model("text-embedding-3-small"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_content_string_parts_and_null() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"a b"},
            {"role":"user","content":[{"type":"text","text":"c"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"d e"}]},
            {"role":"assistant","content":null,"tool_calls":[]},
            {"role":"tool"}
        ],"extra":1}"#;
        let req: ChatRequest = serde_json::from_slice(body).unwrap();
        let texts: Vec<Vec<&str>> = req.messages.iter().map(|m| m.texts().collect()).collect();
        assert_eq!(texts, vec![vec!["a b"], vec!["c", "d e"], vec![], vec![]]);
        assert!(matches!(req.model, Cow::Borrowed("m")));
    }

    #[test]
    fn escaped_strings_are_owned_and_decoded() {
        let req: ChatRequest =
            serde_json::from_slice(br#"{"model":"m","messages":[{"content":"a\nb \u00e9"}]}"#)
                .unwrap();
        assert_eq!(req.messages[0].texts().collect::<Vec<_>>(), vec!["a\nb é"]);
    }

    #[test]
    fn bad_requests_are_errors() {
        for body in [
            &br#"{"messages":[]}"#[..],
            br#"{"model":"m"}"#,
            br#"{"model":1,"messages":[]}"#,
            br#"{"model":"m","messages":[{"content":5}]}"#,
            br#"{"model":"m","messages":[{"content":[{"text":"no type"}]}]}"#,
            br#"{"model":"m","messages":[],"max_tokens":-1}"#,
            br#"{"model":"m","messages":"#,
            b"[]",
        ] {
            assert!(
                serde_json::from_slice::<ChatRequest>(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn prompt_and_input_are_string_or_strings() {
        let one: CompletionRequest =
            serde_json::from_slice(br#"{"model":"m","prompt":"a b"}"#).unwrap();
        assert_eq!(one.prompt.0.iter().collect::<Vec<_>>(), vec!["a b"]);
        let many: EmbeddingRequest =
            serde_json::from_slice(br#"{"model":"m","input":["x","y z"]}"#).unwrap();
        assert_eq!(many.input.0.iter().collect::<Vec<_>>(), vec!["x", "y z"]);
        assert_eq!(many.input.0.first(), Some("x"));
        assert!(
            serde_json::from_slice::<EmbeddingRequest>(br#"{"model":"m","input":[1,2]}"#).is_err()
        );
    }

    #[test]
    fn ids_and_tokens_serialize_as_strings() {
        let id = SeqId {
            prefix: "chatcmpl-mock-",
            seq: 7,
        };
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""chatcmpl-mock-7""#);
        let token = Token {
            first: 0,
            count: 1,
            space: true,
        };
        assert_eq!(serde_json::to_string(&token).unwrap(), r#""lorem ""#);
        let three = Token {
            first: 31,
            count: 3,
            space: false,
        };
        assert_eq!(
            serde_json::to_string(&three).unwrap(),
            r#""ea lorem ipsum""#
        );
    }
}
