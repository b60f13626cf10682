//! JSON string encoding as Rails' ActiveSupport emits it.

/// Appends `value` to `out` as a JSON string literal, escaped as ActiveSupport's JSON
/// encoder does with `escape_html_entities_in_json` (the Rails default): `<`, `>` and `&`
/// become `\u003c`, `\u003e`, `\u0026`, and U+2028/U+2029 are escaped, so a frame is
/// byte-identical to what a Rails server would send.
pub(crate) fn push_string(out: &mut String, value: &str) {
    out.push('"');
    // Runs of characters that need no escape are copied whole.
    let mut unescaped_from = 0;
    for (index, character) in value.char_indices() {
        let short = match character {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '<' => Some("\\u003c"),
            '>' => Some("\\u003e"),
            '&' => Some("\\u0026"),
            '\u{2028}' => Some("\\u2028"),
            '\u{2029}' => Some("\\u2029"),
            control if u32::from(control) < 0x20 => None,
            _ => continue,
        };
        out.push_str(&value[unescaped_from..index]);
        match short {
            Some(escape) => out.push_str(escape),
            None => push_control(out, u32::from(character)),
        }
        unescaped_from = index + character.len_utf8();
    }
    out.push_str(&value[unescaped_from..]);
    out.push('"');
}

/// `\u00XX` for a control character without a short escape.
fn push_control(out: &mut String, code: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u00");
    for shift in [4, 0] {
        let nibble = usize::try_from((code >> shift) & 0xf).unwrap_or(0);
        out.push(char::from(HEX[nibble]));
    }
}

/// Appends `value` in decimal, without the allocation of `to_string`.
pub(crate) fn push_u64(out: &mut String, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b"0123456789"[usize::try_from(rest % 10).unwrap_or(0)];
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for digit in &digits[start..] {
        out.push(char::from(*digit));
    }
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
    fn numbers_are_written_as_to_string_writes_them() {
        for value in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut out = String::from("n=");
            push_u64(&mut out, value);
            assert_eq!(out, format!("n={value}"));
        }
    }

    #[test]
    fn output_is_json_that_decodes_to_the_input() {
        for value in ["", "a\"b", "\u{0}\u{1f}", "<>&", "\u{2028}\u{2029}", "日本"] {
            let decoded: String = serde_json::from_str(&encode(value)).unwrap();
            assert_eq!(decoded, value);
        }
    }
}
