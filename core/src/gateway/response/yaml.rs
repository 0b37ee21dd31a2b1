//! JSON to YAML (the `yaml` output encoding, and `negotiate` for `text/plain` and
//! `application/x-yaml`), written as KrakenD writes it (gin's YAML renderer, goccy's
//! go-yaml encoder):
//! - block style, two spaces per level; an object's members in key order; a list's
//!   items at the indentation of the key that holds them (`key:` then `- item`);
//! - a string is quoted (Go's `strconv.Quote`) when YAML would read it as something
//!   else: empty, `null`/`true`/`yes`/`~`..., a number, a timestamp, a leading
//!   indicator, `: `, ` #`...; strings with control characters are quoted too;
//! - a number is written as the text of a string, quoted when it reads as a number
//!   (KrakenD keeps JSON numbers as `json.Number`, a string type: `id: "42"`);
//! - `true`, `false`, `null`; an empty object `{}`, an empty list `[]`.

use std::borrow::Cow;

use super::{Entry, Member, Node, Tree, sorted, tree};

/// Writes merged members as a YAML document.
pub(crate) fn encode(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    let members = sorted(entries.iter().map(|(k, v)| (k.text(), Cow::Borrowed(v))));
    if members.is_empty() {
        out.extend_from_slice(b"{}\n");
        return;
    }
    write_map(&members, 0, false, out);
}

fn pad(indent: usize, out: &mut Vec<u8>) {
    out.resize(out.len() + indent, b' ');
}

/// `key: value` lines at `indent`; `inline` starts the first line where the caller
/// left off (after a list's `- `).
fn write_map(members: &[Member<'_, '_>], indent: usize, inline: bool, out: &mut Vec<u8>) {
    for (i, (k, v)) in members.iter().enumerate() {
        if !(inline && i == 0) {
            pad(indent, out);
        }
        write_string(k, out);
        out.push(b':');
        match tree(v) {
            Tree::Map(m) if !m.is_empty() => {
                out.push(b'\n');
                write_map(&m, indent + 2, false, out);
            }
            Tree::List(l) if !l.is_empty() => {
                out.push(b'\n');
                write_list(&l, indent, false, out);
            }
            t => {
                out.push(b' ');
                write_scalar(&t, out);
                out.push(b'\n');
            }
        }
    }
}

fn write_list(items: &[Cow<'_, Node<'_>>], indent: usize, inline: bool, out: &mut Vec<u8>) {
    for (i, item) in items.iter().enumerate() {
        if !(inline && i == 0) {
            pad(indent, out);
        }
        out.extend_from_slice(b"- ");
        match tree(item) {
            Tree::Map(m) if !m.is_empty() => write_map(&m, indent + 2, true, out),
            Tree::List(l) if !l.is_empty() => write_list(&l, indent + 2, true, out),
            t => {
                write_scalar(&t, out);
                out.push(b'\n');
            }
        }
    }
}

fn write_scalar(t: &Tree<'_, '_>, out: &mut Vec<u8>) {
    match t {
        Tree::Map(_) => out.extend_from_slice(b"{}"),
        Tree::List(_) => out.extend_from_slice(b"[]"),
        Tree::Null => out.extend_from_slice(b"null"),
        Tree::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Tree::Text(s) | Tree::Number(s) => write_string(s, out),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    if !needs_quotes(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\x07' => out.extend_from_slice(b"\\a"),
            '\x08' => out.extend_from_slice(b"\\b"),
            '\x0c' => out.extend_from_slice(b"\\f"),
            '\x0b' => out.extend_from_slice(b"\\v"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.extend_from_slice(format!("\\x{:02x}", c as u32).as_bytes())
            }
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Words YAML reads as null, a boolean (1.1's too), infinity or not-a-number.
const RESERVED: &[&str] = &[
    "null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "y", "Y", "yes", "Yes", "YES", "n",
    "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", ".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF",
    ".nan", ".NaN", ".NAN",
];

/// Whether a plain (unquoted) scalar would not read back as this string.
fn needs_quotes(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else { return true };
    RESERVED.contains(&s)
        || s == "-"
        || is_number(s)
        || b"*&[{}],!|>%'\"@ `".contains(&first)
        || last == b':'
        || last == b' '
        || is_timestamp(s)
        || b.iter().any(|&c| c == b'#' || c == b'\\' || c.is_ascii_control())
        || b.windows(2).any(|w| (w[0] == b':' || w[0] == b'-') && w[1] == b' ')
        || s.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// Whether YAML reads `s` as a number: decimal, `0x`/`0o`/`0b`, a leading-zero octal,
/// one dot for a float; `_` between digits allowed; out of range still a number.
fn is_number(s: &str) -> bool {
    if s.starts_with('_') || s.bytes().filter(|&c| c == b'.').count() > 1 {
        return false;
    }
    let negative = s.starts_with('-');
    let rest = s.strip_prefix('+').unwrap_or(s);
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let normalized: String = rest.chars().filter(|&c| c != '_').collect();
    let int = |digits: &str, radix: u32| {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return false;
        }
        // Any run of valid digits is a number; out of range still reads as one.
        true
    };
    if let Some(d) = normalized.strip_prefix("0x") {
        int(d, 16)
    } else if let Some(d) = normalized.strip_prefix("0o") {
        int(d, 8)
    } else if let Some(d) = normalized.strip_prefix("0b") {
        int(d, 2)
    } else if normalized.starts_with('0') && normalized.len() > 1 && !normalized.contains('.') {
        int(&normalized, 8)
    } else if normalized.contains('.') {
        let text = if negative { format!("-{normalized}") } else { normalized };
        is_float(&text)
    } else {
        int(&normalized, 10)
    }
}

/// Go's ParseFloat on what has one dot: digits, an optional exponent.
fn is_float(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = mantissa.chars().filter(char::is_ascii_digit).count();
    let ok_mantissa = digits > 0 && mantissa.chars().all(|c| c.is_ascii_digit() || c == '.');
    let ok_exp = exp.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    ok_mantissa && ok_exp
}

/// The timestamp forms goccy's encoder quotes: a date, a date and time (`T`, `t` or
/// a space between, seconds, optional fraction and zone), and `H:M`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>, max: u32| {
        b.get(r.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit))
            && s[r].parse::<u32>().is_ok_and(|n| n <= max)
    };
    let date = b.len() >= 10 && num(0..4, 9999) && b[4] == b'-' && num(5..7, 12) && b[7] == b'-' && num(8..10, 31);
    if date && b.len() == 10 {
        return true;
    }
    if date && b.len() >= 19 && matches!(b[10], b'T' | b't' | b' ') {
        let time = num(11..13, 23) && b[13] == b':' && num(14..16, 59) && b[16] == b':' && num(17..19, 59);
        if !time {
            return false;
        }
        let mut rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return false;
            }
            rest = &frac[n..];
        }
        if b[10] == b' ' {
            return rest.is_empty();
        }
        let zone = rest.as_bytes();
        return rest == "Z"
            || (zone.len() == 6
                && matches!(zone[0], b'+' | b'-')
                && zone[1..3].iter().all(u8::is_ascii_digit)
                && zone[3] == b':'
                && zone[4..6].iter().all(u8::is_ascii_digit));
    }
    // "15:4": an hour and a minute of one or two digits each.
    match s.split_once(':') {
        Some((h, m)) => {
            let part = |p: &str, max: u32| {
                (1..=2).contains(&p.len())
                    && p.bytes().all(|c| c.is_ascii_digit())
                    && p.parse::<u32>().is_ok_and(|n| n <= max)
            };
            part(h, 23) && part(m, 59)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::response::Key;

    fn yaml(json: &str) -> String {
        let members = crate::gateway::json::parse_object(json).unwrap();
        let entries: Vec<Entry<'_>> = members.into_iter().map(|(k, v)| (Key::Raw(k), Node::Raw(v))).collect();
        let mut out = Vec::new();
        encode(&entries, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn documents() {
        assert_eq!(yaml("{}"), "{}\n");
        assert_eq!(
            yaml(r#"{"b":{"y":[1,"two",{"k":true,"a":null}],"x":{}},"a":"plain text","c":[]}"#),
            "a: plain text\nb:\n  x: {}\n  \"y\":\n  - \"1\"\n  - two\n  - a: null\n    k: true\nc: []\n"
        );
        assert_eq!(yaml(r#"{"l":[[1,2],["a"]]}"#), "l:\n- - \"1\"\n  - \"2\"\n- - a\n");
        assert_eq!(yaml(r#"{"a":1,"a":2}"#), "a: \"2\"\n");
    }

    #[test]
    fn quoting() {
        for s in [
            "",
            "null",
            "yes",
            "~",
            "-",
            "42",
            "-1.5",
            "0x1f",
            "0777",
            "1_000",
            "2024-01-02",
            "2024-01-02T03:04:05Z",
            "12:30",
            "a: b",
            "- x",
            "x:",
            "# c",
            "a #b",
            "a\\b",
            "*ref",
            "'q'",
            " lead",
            "trail ",
            "line\nbreak",
            "2024-01-02 03:04:05.5",
            "a\u{2028}b",
        ] {
            assert!(needs_quotes(s), "{s:?} should be quoted");
        }
        for s in ["plain", "a:b", "1e5", "1.2.3", "http://x/y", "a-b", "24:00", "x-1", "über"] {
            assert!(!needs_quotes(s), "{s:?} should be plain");
        }
        let mut out = Vec::new();
        write_string("tab\there \"q\" \u{1b}", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#""tab\there \"q\" \x1b""#);
    }
}
