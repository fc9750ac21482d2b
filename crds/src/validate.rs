//! Validation beyond the OpenAPI schema: pure functions, each with a precise error.

use std::time::Duration;

use thiserror::Error;

/// Why a field is invalid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidField {
    #[error("{field}: {value:?} is not a duration (examples: 500ms, 30s, 2m)")]
    Duration { field: String, value: String },
    #[error("{field}: {value:?} is not an http(s) URL with a host")]
    Url { field: String, value: String },
    #[error(
        "{field}: {value:?} is not a valid model name or glob (letters, digits, . _ - : / @ and the globs * ?)"
    )]
    Glob { field: String, value: String },
    #[error("{field}: invalid regular expression: {reason}")]
    Regex { field: String, reason: String },
    #[error("{field}: {value:?} is not a non-negative decimal price")]
    Price { field: String, value: String },
    #[error("{field}: {value:?} is not an RFC 3339 timestamp")]
    Timestamp { field: String, value: String },
    #[error("{field}: {message}")]
    Other { field: String, message: String },
}

impl InvalidField {
    /// Any other reason a field is invalid.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Other {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Largest weight accepted, to keep weighted sums far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Parses a Kubernetes-style duration string such as `30s`.
pub fn duration(field: &str, value: &str) -> Result<Duration, InvalidField> {
    humantime::parse_duration(value.trim()).map_err(|_| InvalidField::Duration {
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

/// Checks an endpoint URL: http or https, with a host, no query or fragment.
pub fn endpoint_url(field: &str, value: &str) -> Result<url::Url, InvalidField> {
    let err = || InvalidField::Url {
        field: field.to_owned(),
        value: value.to_owned(),
    };
    let parsed = url::Url::parse(value).map_err(|_| err())?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none_or(str::is_empty)
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(err());
    }
    Ok(parsed)
}

/// Checks a model name or glob pattern.
pub fn model_glob(field: &str, value: &str) -> Result<(), InvalidField> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@*?".contains(c));
    if ok {
        Ok(())
    } else {
        Err(InvalidField::Glob {
            field: field.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Checks a regular expression compiles (with a size limit against pathological patterns).
pub fn regex(field: &str, value: &str) -> Result<(), InvalidField> {
    regex::RegexBuilder::new(value)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| InvalidField::Regex {
            field: field.to_owned(),
            reason: e.to_string(),
        })
}

/// Checks a weight is within bounds.
pub fn weight(field: &str, value: u32) -> Result<u32, InvalidField> {
    if value > MAX_WEIGHT {
        return Err(InvalidField::Other {
            field: field.to_owned(),
            message: format!("weight {value} is above the maximum {MAX_WEIGHT}"),
        });
    }
    Ok(value)
}

/// Parses a decimal USD price such as `"2.50"` into micro-dollars.
pub fn price_micros(field: &str, value: &str) -> Result<u64, InvalidField> {
    let err = || InvalidField::Price {
        field: field.to_owned(),
        value: value.to_owned(),
    };
    let v = value.trim();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 6
    {
        return Err(err());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let frac_micros: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| err())?
    };
    int.checked_mul(1_000_000)
        .and_then(|m| m.checked_add(frac_micros))
        .ok_or_else(err)
}

/// Parses an RFC 3339 timestamp into Unix seconds.
pub fn timestamp_unix(field: &str, value: &str) -> Result<i64, InvalidField> {
    let err = || InvalidField::Timestamp {
        field: field.to_owned(),
        value: value.to_owned(),
    };
    let t = humantime::parse_rfc3339_weak(value.trim()).map_err(|_| err())?;
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| err())?
        .as_secs();
    i64::try_from(secs).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("f", "30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("f", "500ms"), Ok(Duration::from_millis(500)));
        assert!(matches!(
            duration("f", "soon"),
            Err(InvalidField::Duration { .. })
        ));
        assert!(duration("f", "").is_err());
    }

    #[test]
    fn urls() {
        assert!(endpoint_url("u", "https://api.openai.com/v1").is_ok());
        assert!(endpoint_url("u", "http://127.0.0.1:8080").is_ok());
        assert!(endpoint_url("u", "ftp://x").is_err());
        assert!(endpoint_url("u", "not a url").is_err());
        assert!(endpoint_url("u", "https://x/v1?a=b").is_err());
    }

    #[test]
    fn globs() {
        assert!(model_glob("m", "gpt-4o").is_ok());
        assert!(model_glob("m", "claude-*").is_ok());
        assert!(model_glob("m", "meta-llama/Llama-3.1-8B:free").is_ok());
        assert!(model_glob("m", "").is_err());
        assert!(model_glob("m", "bad name").is_err());
        assert!(model_glob("m", "a{b}").is_err());
    }

    #[test]
    fn regexes() {
        assert!(regex("p", r"(?i)ignore previous").is_ok());
        let e = regex("p", "(unclosed").unwrap_err();
        assert!(
            e.to_string().starts_with("p: invalid regular expression"),
            "{e}"
        );
    }

    #[test]
    fn weights() {
        assert_eq!(weight("w", 0), Ok(0));
        assert!(weight("w", MAX_WEIGHT + 1).is_err());
    }

    #[test]
    fn prices() {
        assert_eq!(price_micros("p", "2.50"), Ok(2_500_000));
        assert_eq!(price_micros("p", "10"), Ok(10_000_000));
        assert_eq!(price_micros("p", "0.000001"), Ok(1));
        assert_eq!(price_micros("p", ".5"), Ok(500_000));
        assert!(price_micros("p", "-1").is_err());
        assert!(price_micros("p", "1.0000001").is_err());
        assert!(price_micros("p", "abc").is_err());
        assert!(price_micros("p", ".").is_err());
        assert!(price_micros("p", "99999999999999999999").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_unix("t", "1970-01-01T00:01:00Z"), Ok(60));
        assert!(timestamp_unix("t", "tomorrow").is_err());
    }
}
