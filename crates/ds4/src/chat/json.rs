//! JSON text exactly as Python's `json.dumps(value, ensure_ascii=False)` writes it, because the
//! official encoder (`encoding_dsv4.py`, `to_json`) embeds tool schemas and non-string tool
//! arguments that way (spec/serving.md §2.4–§2.5, but the official encoder decides).
//!
//! The differences from `serde_json::to_string` are the separators (`", "` and `": "`), the
//! float format (Python `repr`: `1e-05`, `1e+16`, `100.0`) and the escape table (only `"`, `\`
//! and C0 controls are escaped; non-ASCII is written raw). Key order is the map's order
//! (`serde_json` is built with `preserve_order`).
//!
//! Known gap: integers outside the i64/u64 range have already become `f64` when `serde_json`
//! parsed them, so they print as floats where Python keeps them exact; and `serde_json` reads
//! the integer `-0` as the float `-0.0` (Python: `0`).

use serde_json::{Map, Number, Value};

/// `json.dumps(value, ensure_ascii=False)` of a JSON value.
pub fn to_python_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// `json.dumps(s, ensure_ascii=False)` of a string: the quoted, escaped literal.
pub fn python_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    escape_python_json_into(&mut out, s);
    out.push('"');
    out
}

/// Appends the body of a Python JSON string literal (no quotes) for `s` to `out`.
///
/// Escaping is per character, so escaping a string piece by piece gives the same text as
/// escaping it whole; the streaming tool-call parser relies on that.
pub fn escape_python_json_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// Python `repr(float)` of a finite `f64`; `Infinity`/`NaN` as `json.dumps` writes them.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16", "0e0".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n_digits = digits.len() as i32;
    // Python switches to exponent form when the decimal exponent is < -4 or >= 16.
    if !(-4..16).contains(&exp) {
        let (head, tail) = digits.split_at(1);
        let mut s = format!("{sign}{head}");
        if !tail.is_empty() {
            s.push('.');
            s.push_str(tail);
        }
        let exp_sign = if exp < 0 { '-' } else { '+' };
        s.push_str(&format!("e{exp_sign}{:02}", exp.unsigned_abs()));
        return s;
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        let zeros = "0".repeat(point.unsigned_abs() as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if point >= n_digits {
        let zeros = "0".repeat((point - n_digits) as usize);
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&python_float_repr(f));
    }
}

fn write_map(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        escape_python_json_into(out, k);
        out.push_str("\": ");
        write_value(out, v);
    }
    out.push('}');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => {
            out.push('"');
            escape_python_json_into(out, s);
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_map(out, map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(text: &str) -> String {
        to_python_json(&serde_json::from_str(text).expect("test JSON parses"))
    }

    // Expected strings below were printed by CPython 3.11 `json.dumps(json.loads(s),
    // ensure_ascii=False)`.
    #[test]
    fn floats_match_python_repr() {
        assert_eq!(dumps("1e16"), "1e+16");
        assert_eq!(dumps("1e15"), "1000000000000000.0");
        assert_eq!(dumps("0.0001"), "0.0001");
        assert_eq!(dumps("0.00001"), "1e-05");
        assert_eq!(dumps("1.5e300"), "1.5e+300");
        assert_eq!(dumps("1E5"), "100000.0");
        assert_eq!(dumps("[1.0, 2.50]"), "[1.0, 2.5]");
        assert_eq!(dumps("-0.0"), "-0.0");
        assert_eq!(dumps("-1.25e-7"), "-1.25e-07");
        assert_eq!(dumps("123.456"), "123.456");
        assert_eq!(dumps("0.1"), "0.1");
    }

    #[test]
    fn integers_and_literals_print_plainly() {
        assert_eq!(dumps("18446744073709551615"), "18446744073709551615");
        assert_eq!(dumps("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(dumps("[true, false, null]"), "[true, false, null]");
    }

    #[test]
    fn separators_and_key_order_follow_python() {
        assert_eq!(
            dumps(r#"{"b":1,"a":{"c":[1,2]},"e":{}}"#),
            r#"{"b": 1, "a": {"c": [1, 2]}, "e": {}}"#
        );
        assert_eq!(dumps("[]"), "[]");
    }

    #[test]
    fn escapes_only_quote_backslash_and_controls() {
        let s = "a\u{0}\u{1f}\u{7f}\u{2028}é\"\\\u{8}\u{c}\n\r\t/😀";
        assert_eq!(
            python_json_string(s),
            "\"a\\u0000\\u001f\u{7f}\u{2028}é\\\"\\\\\\b\\f\\n\\r\\t/😀\""
        );
    }
}
