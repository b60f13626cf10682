//! The partner's `data` (`MessageEvent.data`): a JSON object carried in protobuf as a
//! `google.protobuf.Struct`, and its one JSON rendering.
//!
//! A Struct holds every number as an IEEE 754 double, so what reaches clients is the
//! same JSON *value* as the partner sent, not the same text: [`render_data`] sorts keys,
//! drops whitespace, and writes integral numbers of magnitude below 2^53 as integers
//! (`5`, not `5.0`), any other finite double in its shortest form that reads back as
//! the same double. The tests below are the statement of what round-trips.

use pbjson_types::value::Kind;
pub use pbjson_types::{Struct, Value};

/// 2^53: integers of smaller magnitude are exact in a double, and rendered as integers.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Why `data` cannot be carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("data is not a JSON object")]
    NotAnObject,
    #[error("data is not valid JSON for a Struct: {0}")]
    Invalid(String),
}

/// `data` as JSON text: the rendering every stage and client sees. Deterministic (keys
/// sorted), so a replayed event renders to the same bytes. Refuses what JSON cannot
/// carry: NaN or infinite numbers. A value with no kind set is null.
pub fn render_data(data: &Struct) -> Result<String, DataError> {
    let json = struct_to_json(data)?;
    serde_json::to_string(&json).map_err(|error| DataError::Invalid(error.to_string()))
}

/// Parses JSON text that must be an object into a Struct (what `--data` takes).
pub fn parse_data(json: &str) -> Result<Struct, DataError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| DataError::Invalid(error.to_string()))?;
    data_from_json(value)
}

/// A JSON value that must be an object into a Struct. Integers of magnitude 2^53 or
/// more (written without fraction or exponent, up to 2^64 - 1 or down to -2^63) are
/// refused rather than rounded, as pbjson-types refuses them.
pub fn data_from_json(value: serde_json::Value) -> Result<Struct, DataError> {
    if !value.is_object() {
        return Err(DataError::NotAnObject);
    }
    serde_json::from_value(value).map_err(|error| DataError::Invalid(error.to_string()))
}

fn struct_to_json(data: &Struct) -> Result<serde_json::Value, DataError> {
    let mut object = serde_json::Map::new();
    for (key, value) in &data.fields {
        object.insert(key.clone(), value_to_json(value)?);
    }
    Ok(serde_json::Value::Object(object))
}

// Recursion depth is bounded by prost's decoding limit (protobuf) and serde_json's
// (JSON), both 100-odd levels.
fn value_to_json(value: &Value) -> Result<serde_json::Value, DataError> {
    Ok(match &value.kind {
        // pbjson-types reads JSON null as no kind (and so encodes it to protobuf), so
        // no kind is null, not an error.
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(*flag),
        Some(Kind::NumberValue(number)) => serde_json::Value::Number(number_to_json(*number)?),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(object)) => struct_to_json(object)?,
    })
}

fn number_to_json(number: f64) -> Result<serde_json::Number, DataError> {
    if number.trunc() == number && number.abs() < EXACT_INTEGER_LIMIT {
        // Exact: an integral double below 2^53 in magnitude is an i64 without loss.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(serde_json::Number::from(number as i64));
    }
    serde_json::Number::from_f64(number)
        .ok_or_else(|| DataError::Invalid(format!("the number {number} is not finite")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::v1;
    use prost::Message;

    /// A JSON object with every kind of value, and the text fanout renders it to.
    const SENT: &str = r#"{ "text": "h\u00e9llo \"you\"\n", "z": {"nested": [1, -2, 0.1, 1.5e-7, 1e300, -2.50, 1.0, true, false, null, {}, []]},
        "max_exact": 9007199254740991, "min_exact": -9007199254740991, "zero": 0, "empty": "" }"#;
    const RENDERED: &str = r#"{"empty":"","max_exact":9007199254740991,"min_exact":-9007199254740991,"text":"héllo \"you\"\n","z":{"nested":[1,-2,0.1,1.5e-7,1e+300,-2.5,1,true,false,null,{},[]]},"zero":0}"#;

    /// Equal as JSON values: numbers compared as the doubles they denote (`1.0` is `1`).
    fn same_json(left: &serde_json::Value, right: &serde_json::Value) -> bool {
        use serde_json::Value as Json;
        match (left, right) {
            (Json::Number(left), Json::Number(right)) => left.as_f64() == right.as_f64(),
            (Json::Array(left), Json::Array(right)) => {
                left.len() == right.len()
                    && left
                        .iter()
                        .zip(right)
                        .all(|(left, right)| same_json(left, right))
            }
            (Json::Object(left), Json::Object(right)) => {
                left.len() == right.len()
                    && left.iter().all(|(key, value)| {
                        right.get(key).is_some_and(|other| same_json(value, other))
                    })
            }
            _ => left == right,
        }
    }

    fn value(json: &str) -> serde_json::Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn json_in_renders_the_same_json_value() {
        let rendered = render_data(&parse_data(SENT).unwrap()).unwrap();
        assert_eq!(rendered, RENDERED);
        assert!(same_json(&value(&rendered), &value(SENT)));
        // Rendering is a fixed point: the rendering renders to itself.
        assert_eq!(
            render_data(&parse_data(&rendered).unwrap()).unwrap(),
            rendered
        );
    }

    #[test]
    fn json_in_through_protobuf_renders_the_same_json_value() {
        let event_json = format!(
            r#"{{"partner":"acme","data":{SENT},"notification":{{"event":"typing.started","recipients":["bob"]}}}}"#
        );
        let from_json: v1::MessageEvent = serde_json::from_str(&event_json).unwrap();
        let from_protobuf = v1::MessageEvent::decode(from_json.encode_to_vec().as_slice()).unwrap();
        assert_eq!(from_protobuf, from_json);
        assert_eq!(
            render_data(from_protobuf.data.as_ref().unwrap()).unwrap(),
            RENDERED
        );
        // The generated proto3 JSON form writes data as a plain object (numbers as
        // doubles, `1.0`), which reads back as the same event.
        let json_again = serde_json::to_value(&from_protobuf).unwrap();
        assert!(json_again["data"].is_object(), "{json_again}");
        assert_eq!(json_again["data"]["text"], "héllo \"you\"\n");
        let from_json_again: v1::MessageEvent = serde_json::from_value(json_again).unwrap();
        assert_eq!(from_json_again, from_json);
    }

    #[test]
    fn every_finite_double_round_trips_through_the_rendering() {
        let numbers = [
            0.0,
            1.0,
            -1.0,
            0.1,
            1.0 / 3.0,
            EXACT_INTEGER_LIMIT - 1.0,
            EXACT_INTEGER_LIMIT,
            EXACT_INTEGER_LIMIT + 2.0,
            1e20,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            5e-324,
        ];
        for number in numbers {
            let data: Struct = [("n".to_owned(), Value::from(number))]
                .into_iter()
                .collect();
            let rendered = render_data(&data).unwrap();
            let back = parse_data(&rendered).unwrap();
            assert_eq!(back, data, "{number} rendered as {rendered}");
        }
        // And 100,000 arbitrary bit patterns, every finite one.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            // xorshift64: deterministic, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let number = f64::from_bits(state);
            if !number.is_finite() {
                continue;
            }
            let data: Struct = [("n".to_owned(), Value::from(number))]
                .into_iter()
                .collect();
            let rendered = render_data(&data).unwrap();
            let back = parse_data(&rendered).unwrap();
            let Some(Kind::NumberValue(read)) = back.fields["n"].kind else {
                panic!("{rendered}");
            };
            // Bit for bit, but for -0, which comes out as 0.
            let expected = if number == 0.0 { 0.0 } else { number };
            assert_eq!(read.to_bits(), expected.to_bits(), "{rendered}");
        }
        let small: Struct = [("n".to_owned(), Value::from(5.0))].into_iter().collect();
        assert_eq!(render_data(&small).unwrap(), r#"{"n":5}"#);
    }

    #[test]
    fn the_limits_are_refused_or_rounded_as_documented() {
        // Integers from 2^53 to 2^64 are refused, not rounded.
        for text in [
            r#"{"n":9007199254740992}"#,
            r#"{"n":-9007199254740992}"#,
            r#"{"n":18446744073709551615}"#,
            r#"{"n":-9223372036854775808}"#,
        ] {
            assert!(
                matches!(parse_data(text), Err(DataError::Invalid(_))),
                "{text}"
            );
        }
        // Past u64 (or i64, negative), or written with an exponent or fraction: the
        // nearest double.
        assert_eq!(
            render_data(&parse_data(r#"{"n":-9223372036854775809}"#).unwrap()).unwrap(),
            r#"{"n":-9.223372036854776e+18}"#
        );
        assert_eq!(
            render_data(&parse_data(r#"{"n":18446744073709551617}"#).unwrap()).unwrap(),
            r#"{"n":1.8446744073709552e+19}"#
        );
        assert_eq!(
            render_data(&parse_data(r#"{"n":9007199254740993.0}"#).unwrap()).unwrap(),
            r#"{"n":9007199254740992.0}"#
        );
        // Negative zero comes out as 0.
        assert_eq!(
            render_data(&parse_data(r#"{"n":-0.0}"#).unwrap()).unwrap(),
            r#"{"n":0}"#
        );
        // What JSON cannot carry, protobuf can: refused when rendering.
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let data: Struct = [("n".to_owned(), Value::from(bad))].into_iter().collect();
            assert!(
                matches!(render_data(&data), Err(DataError::Invalid(_))),
                "{bad}"
            );
        }
        // A value with no kind is how pbjson-types encodes JSON null.
        let unset: Struct = [("n".to_owned(), Value { kind: None })]
            .into_iter()
            .collect();
        assert_eq!(render_data(&unset).unwrap(), r#"{"n":null}"#);
    }

    #[test]
    fn only_objects_are_data() {
        for text in [r#""text""#, "[1]", "1", "null", "true"] {
            assert_eq!(parse_data(text), Err(DataError::NotAnObject), "{text}");
        }
        assert!(matches!(parse_data("{"), Err(DataError::Invalid(_))));
        assert_eq!(render_data(&parse_data("{}").unwrap()).unwrap(), "{}");
    }
}
