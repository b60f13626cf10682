//! JSON string encoding as Rails' ActiveSupport emits it.

/// Appends `value` to `out` as a JSON string literal, escaped as ActiveSupport's JSON
/// encoder does with `escape_html_entities_in_json` (the Rails default): `<`, `>` and `&`
/// become `\u003c`, `\u003e`, `\u0026`, and U+2028/U+2029 are escaped, so a frame is
/// byte-identical to what a Rails server would send.
pub(crate) fn push_string(out: &mut String, value: &str) {
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            control if (control as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", control as u32));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encode(value: &str) -> String {
        let mut out = String::new();
        push_string(&mut out, value);
        out
    }

    #[test]
    fn escapes_like_active_support() {
        assert_eq!(encode("plain"), r#""plain""#);
        assert_eq!(encode(r#"{"channel":"A"}"#), r#""{\"channel\":\"A\"}""#);
        assert_eq!(encode("<a&b>"), r#""\u003ca\u0026b\u003e""#);
        assert_eq!(encode("line\u{2028}sep"), r#""line\u2028sep""#);
        assert_eq!(encode("\u{1}\n\\"), r#""\u0001\n\\""#);
        assert_eq!(encode("émoji 🎉"), "\"émoji 🎉\"");
    }

    #[test]
    fn output_is_json_that_decodes_to_the_input() {
        for value in ["", "a\"b", "\u{0}\u{1f}", "<>&", "\u{2028}\u{2029}", "日本"] {
            let decoded: String = serde_json::from_str(&encode(value)).unwrap();
            assert_eq!(decoded, value);
        }
    }
}
