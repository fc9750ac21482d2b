//! JSON-schema checks of answers: when a request asks for structured output against a
//! schema (OpenAI `response_format.json_schema`, Responses `text.format`, Anthropic
//! `output_config.format`) and one of its guardrails sets `jsonSchema`, the answer's text must
//! parse as JSON and validate against that schema (the `jsonschema` crate). A whole answer
//! that does not is blocked or alerted; a stream is checked when it ends (its text has gone
//! out by then: `Block` ends it with an error event instead of its normal end).

use serde_json::Value;

use crate::llm::Format;
use crate::llm::raw::RawObject;

/// The schema a request asks its answer to follow, if any.
pub(crate) fn requested(format: Format, raw: &RawObject) -> Option<Value> {
    let (field, path): (&str, &[&str]) = match format {
        Format::OpenAiChat => ("response_format", &["json_schema", "schema"]),
        Format::OpenAiResponses => ("text", &["format", "schema"]),
        Format::AnthropicMessages => ("output_config", &["format", "schema"]),
        Format::OpenAiCompletions
        | Format::OpenAiEmbeddings
        | Format::Gemini
        | Format::BedrockConverse => return None,
    };
    let v: Value = serde_json::from_slice(raw.get(field)?).ok()?;
    let kind = match format {
        Format::OpenAiChat => &v["type"],
        Format::OpenAiCompletions
        | Format::OpenAiResponses
        | Format::OpenAiEmbeddings
        | Format::AnthropicMessages
        | Format::Gemini
        | Format::BedrockConverse => &v["format"]["type"],
    };
    if kind != "json_schema" {
        return None;
    }
    let schema = path.iter().fold(&v, |v, k| &v[*k]);
    schema.is_object().then(|| schema.clone())
}

/// A compiled schema.
pub(crate) struct SchemaCheck {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for SchemaCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaCheck")
    }
}

/// Why a schema check failed. Never holds the answer's text: only where and which rule.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SchemaError {
    /// The requested schema itself is invalid (the client's mistake).
    #[error("the requested JSON schema is invalid: {0}")]
    InvalidSchema(String),
    #[error("the answer is not JSON ({0})")]
    NotJson(&'static str),
    #[error("the answer does not follow the requested schema (at `{path}`: {rule})")]
    Mismatch { path: String, rule: String },
}

impl SchemaCheck {
    /// `Err`: the schema itself is invalid (the client's mistake: said in the error).
    pub(crate) fn new(schema: &Value) -> Result<Self, SchemaError> {
        jsonschema::validator_for(schema)
            .map(|validator| Self { validator })
            .map_err(|e| SchemaError::InvalidSchema(e.to_string()))
    }

    /// Whether `text` is JSON that validates; `Err` says why not (never the text itself).
    pub(crate) fn check(&self, text: &str) -> Result<(), SchemaError> {
        let value: Value = serde_json::from_str(text.trim())
            .map_err(|e| SchemaError::NotJson(e.classify_name()))?;
        match self.validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(e) => Err(SchemaError::Mismatch {
                path: e.instance_path().to_string(),
                rule: e.kind_name(),
            }),
        }
    }
}

/// The text of a whole answer rendered in a client format.
pub(crate) fn answer_text(format: Format, body: &Value) -> Option<String> {
    match format {
        Format::OpenAiChat => body["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned),
        Format::OpenAiResponses => Some(
            body["output"]
                .as_array()?
                .iter()
                .filter_map(|o| o["content"].as_array())
                .flatten()
                .filter(|c| c["type"] == "output_text")
                .filter_map(|c| c["text"].as_str())
                .collect(),
        ),
        Format::AnthropicMessages => Some(
            body["content"]
                .as_array()?
                .iter()
                .filter(|c| c["type"] == "text")
                .filter_map(|c| c["text"].as_str())
                .collect(),
        ),
        Format::OpenAiCompletions
        | Format::OpenAiEmbeddings
        | Format::Gemini
        | Format::BedrockConverse => None,
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "a syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "it ends too early",
        }
    }
}

/// What kind of failure a validation error is (its keyword), without the instance value.
trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for jsonschema::ValidationError<'_> {
    fn kind_name(&self) -> String {
        // The keyword path's last segment names the rule that failed (`required`, `type`).
        self.schema_path()
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or("schema")
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_checked_against_the_requested_schema() {
        let raw = RawObject::parse(
            json!({"model": "m", "response_format": {"type": "json_schema", "json_schema": {"name": "p",
                "schema": {"type": "object", "required": ["name", "age"],
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}}}})
            .to_string()
            .into(),
        )
        .expect("raw");
        let schema = requested(Format::OpenAiChat, &raw).expect("asked for a schema");
        let c = SchemaCheck::new(&schema).expect("valid schema");
        assert_eq!(c.check(r#"{"name": "Ada", "age": 36}"#), Ok(()));
        let e = c
            .check(r#"{"name": "Ada"}"#)
            .expect_err("missing age")
            .to_string();
        assert!(e.contains("required"), "{e}");
        let e = c
            .check(r#"{"name": "Ada", "age": "old"}"#)
            .expect_err("wrong type")
            .to_string();
        assert!(
            e.contains("/age") && !e.contains("old"),
            "never the value: {e}"
        );
        assert!(c.check("Sure! Here it is").is_err());
        let plain = RawObject::parse(json!({"model": "m"}).to_string().into()).expect("raw");
        assert!(requested(Format::OpenAiChat, &plain).is_none());
        assert!(SchemaCheck::new(&json!({"type": 12})).is_err());
    }

    #[test]
    fn the_answer_text_is_found_in_each_format() {
        let chat = json!({"choices": [{"message": {"content": "{}"}}]});
        assert_eq!(
            answer_text(Format::OpenAiChat, &chat).as_deref(),
            Some("{}")
        );
        let msg = json!({"content": [{"type": "thinking", "thinking": "x"}, {"type": "text", "text": "{\"a\":1}"}]});
        assert_eq!(
            answer_text(Format::AnthropicMessages, &msg).as_deref(),
            Some("{\"a\":1}")
        );
        let resp = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "[1]"}]}]});
        assert_eq!(
            answer_text(Format::OpenAiResponses, &resp).as_deref(),
            Some("[1]")
        );
    }
}
