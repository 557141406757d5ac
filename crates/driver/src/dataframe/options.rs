//! String options of readers and writers (`.option("header", "true")`), parsed into
//! typed values with errors that name the option.
//!
//! Keys are case-insensitive, as in Spark. Unlike Spark, an option the format does not
//! know is an error rather than silently ignored, so a typo cannot go unnoticed.

use std::collections::BTreeMap;

use ember_core::{EmberError, Result};

#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    values: BTreeMap<String, String>,
}

impl Options {
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.values
            .insert(key.to_ascii_lowercase(), value.to_string());
    }

    /// Fails on the first key not in `known` (all lowercase).
    pub(crate) fn check_known(&self, what: &str, known: &[&str]) -> Result<()> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            Some(key) => Err(EmberError::Config(format!(
                "unknown {what} option '{key}' (supported: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The value of the first of `keys` that is set (aliases such as `sep`/`delimiter`).
    fn get<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &str)> {
        keys.iter()
            .find_map(|k| self.values.get(*k).map(|v| (*k, v.as_str())))
    }

    pub(crate) fn bool(&self, keys: &[&str]) -> Result<Option<bool>> {
        self.get(keys)
            .map(
                |(key, value)| match value.trim().to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(invalid(key, value, "true or false")),
                },
            )
            .transpose()
    }

    /// A one-byte character option such as a delimiter (`\t` is accepted for tab).
    pub(crate) fn byte(&self, keys: &[&str]) -> Result<Option<u8>> {
        self.get(keys)
            .map(|(key, value)| match value.as_bytes() {
                [b] => Ok(*b),
                b"\\t" => Ok(b'\t'),
                _ => Err(invalid(key, value, "a single one-byte character")),
            })
            .transpose()
    }

    pub(crate) fn usize(&self, keys: &[&str]) -> Result<Option<usize>> {
        self.get(keys)
            .map(|(key, value)| {
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| invalid(key, value, "a non-negative integer"))
            })
            .transpose()
    }

    pub(crate) fn string(&self, keys: &[&str]) -> Option<String> {
        self.get(keys).map(|(_, v)| v.to_string())
    }
}

fn invalid(key: &str, value: &str, expected: &str) -> EmberError {
    EmberError::Config(format!(
        "option '{key}' has invalid value '{value}': expected {expected}"
    ))
}

#[cfg(test)]
mod tests {
    use super::Options;

    #[test]
    fn options_parse_and_reject_bad_values() {
        let mut o = Options::default();
        o.set("Header", "TRUE");
        o.set("sep", "\\t");
        o.set("n", "x");
        assert_eq!(o.bool(&["header"]).ok().flatten(), Some(true));
        assert_eq!(o.byte(&["delimiter", "sep"]).ok().flatten(), Some(b'\t'));
        let err = o.usize(&["n"]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("'n'") && e.contains("'x'")));
        let err = o.check_known("csv", &["header", "sep"]).err();
        assert!(err.is_some_and(|e| e.to_string().contains("unknown csv option 'n'")));
    }
}
