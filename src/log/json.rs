//! A small JSON writer for `list --json`, `status --json` and JSON logs:
//! objects of strings, numbers, booleans, nulls and nested values, in the
//! order they are added.

/// A JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON array of already-written values.
pub fn array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

/// An object under construction.
#[derive(Default)]
pub struct Object(Vec<(String, String)>);

impl Object {
    pub fn new() -> Object {
        Object::default()
    }

    /// A value already written as JSON.
    pub fn raw(mut self, key: &str, json: String) -> Object {
        self.0.push((key.to_string(), json));
        self
    }

    pub fn str(self, key: &str, value: &str) -> Object {
        self.raw(key, string(value))
    }

    pub fn num(self, key: &str, value: impl Into<f64>) -> Object {
        let v: f64 = value.into();
        let text = if v.fract() == 0.0 && v.abs() < 9e15 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        };
        self.raw(key, text)
    }

    pub fn bool(self, key: &str, value: bool) -> Object {
        self.raw(key, value.to_string())
    }

    /// `null` when absent.
    pub fn opt(self, key: &str, value: Option<String>) -> Object {
        self.raw(key, value.unwrap_or_else(|| "null".into()))
    }

    pub fn finish(self) -> String {
        let fields: Vec<String> = self
            .0
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", string(&k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json() {
        let text = Object::new()
            .str("s", "a\"b\\c\nd\u{1}")
            .num("n", 42u32)
            .num("f", 1.5)
            .bool("b", true)
            .opt("none", None)
            .raw("list", array([string("x"), string("y")]))
            .finish();
        assert_eq!(
            text,
            r#"{"s":"a\"b\\c\nd\u0001","n":42,"f":1.5,"b":true,"none":null,"list":["x","y"]}"#
        );
    }
}
