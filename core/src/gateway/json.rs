//! A validating JSON scanner that never converts what it does not have to.
//!
//! Backend bodies are shaped without building a document tree: values are located by
//! their byte ranges in the original text, validated on the way, and copied out as
//! they came. That is what keeps `12345678901234567890123`, `1.50`, `1e3` and
//! `"\u00e9"` byte for byte, and what makes shaping cheap: a value nobody looks into is
//! scanned once and copied once.
//!
//! Raw texts handed around here (`&str`) are always one whole, validated JSON value
//! without surrounding whitespace. Keys are kept in their raw, still-escaped form (the
//! text between the quotes) and compared by meaning with [`key_is`].

use std::borrow::Cow;

/// Deepest nesting accepted (as serde_json's default): a hostile body cannot exhaust
/// the stack.
pub const MAX_DEPTH: u32 = 128;

/// Why a text is not JSON, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for JsonError {}

/// The kind of a raw value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

fn err<T>(offset: usize, reason: &'static str) -> Result<T, JsonError> {
    Err(JsonError { offset, reason })
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = b.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// Validates a whole document and returns it without surrounding whitespace.
pub fn parse_document(text: &str) -> Result<&str, JsonError> {
    let b = text.as_bytes();
    let start = skip_ws(b, 0);
    if start == b.len() {
        return err(start, "empty body");
    }
    let end = value_end(b, start, 0)?;
    let after = skip_ws(b, end);
    if after != b.len() {
        return err(after, "trailing characters after the value");
    }
    Ok(&text[start..end])
}

/// Validates a whole document that must be an object and returns its members, in one
/// pass (the shaping fast path: the top level is what merging works on).
pub fn parse_object(text: &str) -> Result<Vec<Member<'_>>, JsonError> {
    let mut out = Vec::with_capacity(16);
    parse_object_with(text, |k, v| out.push((k, v)))?;
    Ok(out)
}

/// [`parse_object`], handing each member to `member` as it is found (so that the
/// caller keeps them in its own form, without a list in between). On an error some
/// members may have been handed already.
pub fn parse_object_with<'a>(text: &'a str, mut member: impl FnMut(&'a str, &'a str)) -> Result<(), JsonError> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    match b.get(i) {
        Some(b'{') => {}
        None => return err(i, "empty body"),
        Some(_) => return err(i, "not an object"),
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return err(i, "expected a key");
            }
            let key_end = string_end(b, i)?;
            let key = &text[i + 1..key_end - 1];
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return err(i, "expected ':'");
            }
            let v = skip_ws(b, i + 1);
            // A call (`value_end` is never inlined), not the string scan inlined: here
            // the scan's constants would not stay in registers (the 2 KB bodies' long
            // padding strings showed it).
            let v_end = value_end(b, v, 1)?;
            member(key, &text[v..v_end]);
            i = skip_ws(b, v_end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                Some(_) => return err(i, "expected ',' or '}'"),
                None => return err(i, "unexpected end of input"),
            }
        }
    }
    let after = skip_ws(b, i);
    if after != b.len() {
        return err(after, "trailing characters after the value");
    }
    Ok(())
}

/// The kind of a raw value (one produced by this module).
pub fn kind(raw: &str) -> Kind {
    match raw.as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// Where the value starting at `i` ends (exclusive), validating it. Never inlined: its
/// callers' own registers would crowd the string scan's constants out (see
/// `container_end`).
#[inline(never)]
fn value_end(b: &[u8], i: usize, depth: u32) -> Result<usize, JsonError> {
    match b.get(i) {
        Some(b'{') => container_end::<true>(b, i, depth),
        Some(b'[') => container_end::<false>(b, i, depth),
        Some(b'"') => string_end(b, i),
        Some(b'-' | b'0'..=b'9') => number_end(b, i),
        Some(b't') => literal_end(b, i, b"true"),
        Some(b'f') => literal_end(b, i, b"false"),
        Some(b'n') => literal_end(b, i, b"null"),
        Some(_) => err(i, "expected a value"),
        None => err(i, "unexpected end of input"),
    }
}

fn literal_end(b: &[u8], i: usize, lit: &[u8]) -> Result<usize, JsonError> {
    if b.get(i..i + lit.len()) == Some(lit) { Ok(i + lit.len()) } else { err(i, "invalid literal") }
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn number_end(b: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_end(b, i),
        _ => return err(i, "invalid number"),
    }
    if b.get(i) == Some(&b'.') {
        let after = digits_end(b, i + 1);
        if after == i + 1 {
            return err(i + 1, "invalid number: no digit after the decimal point");
        }
        i = after;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let after = digits_end(b, i);
        if after == i {
            return err(i, "invalid number: no digit in the exponent");
        }
        i = after;
    }
    Ok(i)
}

/// Flags the bytes of `v` that may be `"`, `\` or a control character (below 0x20),
/// by the borrow tests of `crate::swar::below`: none is missed, and the lowest flag is
/// always a true one (a false flag comes only from a borrow above a true one). Two
/// tests, not three: XOR 0x02 turns `"` (0x22) into 0x20 and keeps a control byte below
/// 0x20, so "below 0x21 after it" finds both; `\` is the other. Both XOR constants are
/// below 0x80, so each test's `& !x & 0x80..` is `& !v & 0x80..`, and they share it.
fn special(v: u64) -> u64 {
    use crate::swar::splat;
    let quote_or_control = (v ^ splat(0x02)).wrapping_sub(splat(0x21));
    let backslash = (v ^ splat(b'\\')).wrapping_sub(splat(0x01));
    (quote_or_control | backslash) & !v & splat(0x80)
}

/// Where the run of plain string bytes from `i` ends: at the first `"`, `\\` or
/// control character, or at the end of the text. Eight bytes a step, then one at a
/// time; the lowest flag is a true one (see `special`), so a step goes straight to
/// it. Sixteen bytes a step took 8% fewer instructions on the aggregation request but
/// ran the 2 KB bodies 38% slower (`cargo bench --bench pipeline -- validate_2x2KB`:
/// LLVM moves the two words into an SSE register, and the way back to a byte index is
/// long), and a `u128` step was slower than both: kept at eight.
#[inline(always)]
fn plain_end(b: &[u8], i: usize) -> usize {
    let mut rest = b.get(i..).unwrap_or_default();
    while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
        let flags = special(u64::from_le_bytes(*eight));
        if flags != 0 {
            return b.len() - rest.len() + (flags.trailing_zeros() / 8) as usize;
        }
        rest = tail;
    }
    let plain = rest.iter().take_while(|&&c| c != b'"' && c != b'\\' && c >= 0x20).count();
    b.len() - rest.len() + plain
}

/// `i` is at the opening quote; returns the index after the closing one. The input is
/// a `&str`, so UTF-8 is already valid: only escapes and control characters are checked.
#[inline(always)]
fn string_end(b: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start + 1;
    loop {
        i = plain_end(b, i);
        match b.get(i) {
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = b.get(i + 2..i + 6).unwrap_or_default();
                    if hex.len() != 4 || !hex.iter().all(u8::is_ascii_hexdigit) {
                        return err(i, "invalid \\u escape");
                    }
                    i += 6;
                }
                _ => return err(i, "invalid escape"),
            },
            Some(_) => return err(i, "control character in a string"),
            None => return err(i, "unterminated string"),
        }
    }
}

/// Where the object (`OBJECT`) or array starting at `start` ends, validating it. One
/// copy each: with the kind a constant, the string scan's five SWAR constants stay in
/// registers instead of being loaded again at every eight bytes.
fn container_end<const OBJECT: bool>(b: &[u8], start: usize, depth: u32) -> Result<usize, JsonError> {
    if depth >= MAX_DEPTH {
        return err(start, "nesting too deep");
    }
    let close = if OBJECT { b'}' } else { b']' };
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&close) {
        return Ok(i + 1);
    }
    loop {
        if OBJECT {
            if b.get(i) != Some(&b'"') {
                return err(i, "expected a key");
            }
            i = skip_ws(b, string_end(b, i)?);
            if b.get(i) != Some(&b':') {
                return err(i, "expected ':'");
            }
            i = skip_ws(b, i + 1);
        }
        // Strings, the commonest values, are scanned here rather than in a call.
        let end = if b.get(i) == Some(&b'"') { string_end(b, i)? } else { value_end(b, i, depth + 1)? };
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(&c) if c == close => return Ok(i + 1),
            Some(_) => return err(i, if OBJECT { "expected ',' or '}'" } else { "expected ',' or ']'" }),
            None => return err(i, "unexpected end of input"),
        }
    }
}

/// One member of an object: the raw key (between the quotes, escapes kept) and the raw value.
pub type Member<'a> = (&'a str, &'a str);

/// Calls `f` for each member of a raw object, in order. `raw` must be a raw object;
/// anything else yields nothing.
pub fn for_each_member<'a>(raw: &'a str, mut f: impl FnMut(&'a str, &'a str)) {
    let b = raw.as_bytes();
    if b.first() != Some(&b'{') {
        return;
    }
    let mut i = skip_ws(b, 1);
    while b.get(i) == Some(&b'"') {
        // The text was validated: these cannot fail, but stay total anyway.
        let Ok(key_end) = string_end(b, i) else { return };
        let key = &raw[i + 1..key_end - 1];
        let v = skip_ws(b, skip_ws(b, key_end) + 1);
        let Ok(v_end) = value_end(b, v, 0) else { return };
        f(key, &raw[v..v_end]);
        i = skip_ws(b, v_end);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        }
    }
}

/// The members of a raw object, in order.
pub fn members(raw: &str) -> Vec<Member<'_>> {
    let mut out = Vec::with_capacity(16);
    for_each_member(raw, |k, v| out.push((k, v)));
    out
}

/// The items of a raw array, in order. Anything else yields nothing.
pub fn items(raw: &str) -> Vec<&str> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    if b.first() != Some(&b'[') {
        return out;
    }
    let mut i = skip_ws(b, 1);
    while i < b.len() && b.get(i) != Some(&b']') {
        let Ok(end) = value_end(b, i, 0) else { return out };
        out.push(&raw[i..end]);
        i = skip_ws(b, end);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        }
    }
    out
}

/// The value of the member `name` of a raw object (the last one, if repeated, as most
/// decoders do).
pub fn get<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let mut found = None;
    for_each_member(raw, |k, v| {
        if key_is(k, name) {
            found = Some(v);
        }
    });
    found
}

/// Follows a dotted path through objects and arrays (`items.0.id`).
pub fn lookup<'a, S: AsRef<str>>(raw: &'a str, path: &[S]) -> Option<&'a str> {
    let mut cur = raw;
    for step in path {
        let step = step.as_ref();
        cur = match kind(cur) {
            Kind::Object => get(cur, step)?,
            Kind::Array => {
                let index: usize = step.parse().ok()?;
                items(cur).get(index).copied()?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Whether a raw key (a valid string's contents, escapes kept) means `name`.
///
/// By length first: each escape is longer than the text it stands for, so a raw key
/// shorter than the name never means it, and one as long means it only when the two
/// are the same bytes and the key has no escape. A longer key is unescaped only when
/// it has an escape at or before the first byte where it and the name differ (nothing
/// before the first escape changes): `user_count` against `user` stops at the `_`.
pub fn key_is(raw_key: &str, name: &str) -> bool {
    let (raw, text) = (raw_key.as_bytes(), name.as_bytes());
    match raw.len().cmp(&text.len()) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => same_plain(raw, text),
        std::cmp::Ordering::Greater => {
            let differ = raw.iter().zip(text).position(|(a, b)| a != b).unwrap_or(text.len());
            let same = raw.get(..=differ).unwrap_or_default();
            // A loop in place: the prefix is short, and `contains` is a call to memchr.
            #[allow(clippy::manual_contains)]
            let escaped = same.iter().any(|&c| c == b'\\');
            escaped && unescape(raw_key) == name
        }
    }
}

/// Whether `a` and `b`, of one length, are the same bytes with no backslash among
/// them: eight bytes a step, then one at a time (one pass, no call: keys are short).
fn same_plain(a: &[u8], b: &[u8]) -> bool {
    let (mut a, mut b) = (a, b);
    while let (Some((x, a_tail)), Some((y, b_tail))) = (a.split_first_chunk::<8>(), b.split_first_chunk::<8>()) {
        let x = u64::from_le_bytes(*x);
        // The lowest flag is a true one (`crate::swar`): any flag is a backslash.
        if x != u64::from_le_bytes(*y) || crate::swar::equal(x, b'\\') != 0 {
            return false;
        }
        (a, b) = (a_tail, b_tail);
    }
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == y && x != b'\\')
}

/// The text of a raw string's contents (between the quotes), escapes resolved.
/// Invalid surrogates become U+FFFD, as most decoders do.
pub fn unescape(content: &str) -> Cow<'_, str> {
    if !content.contains('\\') {
        return Cow::Borrowed(content);
    }
    let mut out = String::with_capacity(content.len());
    let mut chars = content.char_indices();
    while let Some((_, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((at, e)) = chars.next() else { break };
        match e {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let unit = hex4(content, at + 1);
                for _ in 0..4 {
                    chars.next();
                }
                let c = if (0xD800..0xDC00).contains(&unit) && content.get(at + 5..at + 7) == Some("\\u") {
                    let low = hex4(content, at + 7);
                    if (0xDC00..0xE000).contains(&low) {
                        for _ in 0..6 {
                            chars.next();
                        }
                        char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                    } else {
                        None
                    }
                } else {
                    char::from_u32(unit)
                };
                out.push(c.unwrap_or('\u{FFFD}'));
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

fn hex4(s: &str, at: usize) -> u32 {
    s.get(at..at + 4).and_then(|h| u32::from_str_radix(h, 16).ok()).unwrap_or(0xFFFD)
}

/// The text a scalar stands for in a URL or a header: a string's contents unescaped,
/// a number or boolean as written. `None` for null, objects and arrays.
pub fn scalar_text(raw: &str) -> Option<Cow<'_, str>> {
    match kind(raw) {
        Kind::String => Some(unescape(raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default())),
        Kind::Number | Kind::Bool => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// A value as lura puts an earlier answer's value into a sequence's parameters
/// (`{respN_...}`, `sequential_propagated_params`): a scalar as [`scalar_text`], null
/// as `<nil>`, an array's items joined by `,`, an object as Go's `%v` writes a map
/// (`map[a:1 b:[x y]]`, keys sorted).
pub fn go_param_text(raw: &str) -> String {
    match kind(raw) {
        Kind::Array => items(raw).into_iter().map(go_v).collect::<Vec<_>>().join(","),
        _ => go_v(raw),
    }
}

/// Go's `%v` of a decoded JSON value.
fn go_v(raw: &str) -> String {
    match kind(raw) {
        Kind::Null => "<nil>".into(),
        Kind::Array => format!("[{}]", items(raw).into_iter().map(go_v).collect::<Vec<_>>().join(" ")),
        Kind::Object => {
            let mut m: Vec<(Cow<'_, str>, &str)> = members(raw).into_iter().map(|(k, v)| (unescape(k), v)).collect();
            m.sort_by(|a, b| a.0.cmp(&b.0));
            m.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1 = later.1;
                }
                same
            });
            let parts: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}:{}", go_v(v))).collect();
            format!("map[{}]", parts.join(" "))
        }
        _ => scalar_text(raw).map(Cow::into_owned).unwrap_or_default(),
    }
}

/// Writes `s` as a JSON string, quotes included.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    write_escaped(s, out);
    out.push(b'"');
}

/// Writes `s` escaped for the inside of a JSON string.
pub fn write_escaped(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&b[run..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&b[run..]);
}

/// A JSON value as Go's `json.Marshal` writes it (gin's `c.JSON`): compact, object
/// keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped.
pub fn go_marshal(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            // Go decodes numbers into float64 and writes a whole one without a
            // fraction (`1.0` and `1e3` come out as `1` and `1000`).
            Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => Value::from(f as i64),
                _ => Value::Number(n.clone()),
            },
            other => other.clone(),
        }
    }
    let text = sorted(v).to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod swar_tests {
    use super::special;

    /// Where the scan stops in eight bytes: the first special one, or 8.
    fn first(bytes: [u8; 8]) -> u32 {
        special(u64::from_le_bytes(bytes)).trailing_zeros() / 8
    }

    #[test]
    fn every_byte_value_is_flagged_or_not_as_it_is_special() {
        // Every byte value at every position, beside neighbours that borrow or not: no
        // special byte missed, the lowest flag the first special byte, no flag when
        // none is (flags above the first may be false ones: a borrow).
        let is_special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for b in 0..=255u8 {
            for at in 0..8 {
                for fill in [0u8, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, b'\\', b'a', 0x7f, 0x80, 0xa2, 0xff] {
                    let mut word = [fill; 8];
                    word[at] = b;
                    let truth = word
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| is_special(**b))
                        .fold(0u64, |mask, (i, _)| mask | 0x80 << (8 * i));
                    let flags = super::special(u64::from_le_bytes(word));
                    assert_eq!(flags & truth, truth, "a special byte missed in {word:?}");
                    assert_eq!(flags.trailing_zeros(), truth.trailing_zeros(), "{word:?}");
                }
            }
        }
    }

    #[test]
    fn strings_end_where_they_end_wherever_the_special_byte_falls() {
        use super::{parse_document, string_end};
        for len in 0..48 {
            for at in 0..len {
                let mut text = vec![b'x'; len];
                text[at] = b'"';
                let mut doc = b"\"".to_vec();
                doc.extend_from_slice(&text);
                doc.extend_from_slice(b"\" ");
                // The first quote ends the string; an escaped one does not.
                assert_eq!(string_end(&doc, 0), Ok(at + 2), "quote at {at} of {len}");
                let escaped = String::from_utf8(doc.clone()).unwrap().replacen("x\"", "\\\"", 1);
                if at > 0 {
                    assert_eq!(string_end(escaped.as_bytes(), 0), Ok(len + 2), "escaped quote at {at} of {len}");
                }
                doc[at + 1] = 0x1f;
                let e = parse_document(std::str::from_utf8(&doc).unwrap()).unwrap_err();
                assert_eq!((e.offset, e.reason), (at + 1, "control character in a string"), "at {at} of {len}");
            }
        }
    }

    #[test]
    fn plain_bytes_are_never_flagged_and_the_lowest_flag_is_the_first_special_byte() {
        let plain = *b"abcdefgh";
        assert_eq!(first(plain), 8);
        assert_eq!(first([0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']']), 8);
        // Every special byte at every place, alone and under a second one above it
        // (whose borrow may flag the bytes above it: never below).
        let specials = [b'"', b'\\', 0x00, 0x01, 0x0a, 0x1f];
        let others = [b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff];
        for s in specials {
            for at in 0..8 {
                let mut bytes = plain;
                bytes[at] = s;
                assert_eq!(first(bytes), at as u32, "{s:#x} at {at}");
                for o in others {
                    for above in at + 1..8 {
                        let mut two = bytes;
                        two[above] = o;
                        assert_eq!(first(two), at as u32, "{s:#x} at {at}, {o:#x} at {above}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        assert_eq!(
            parse_document(" {\"a\": [1, 2.5e-3, true, null, \"x\"]}\n"),
            Ok("{\"a\": [1, 2.5e-3, true, null, \"x\"]}")
        );
        assert_eq!(parse_document("12345678901234567890123"), Ok("12345678901234567890123"));
        for (bad, at, reason) in [
            ("", 0, "empty body"),
            ("{", 1, "expected a key"),
            ("{\"a\" 1}", 5, "expected ':'"),
            ("{\"a\":1,}", 7, "expected a key"),
            ("[1,]", 3, "expected a value"),
            ("[1 2]", 3, "expected ',' or ']'"),
            ("{\"a\":1 \"b\":2}", 7, "expected ',' or '}'"),
            ("[{\"a\":[1}]", 8, "expected ',' or ']'"),
            ("{\"a\":[{\"b\":1]}", 12, "expected ',' or '}'"),
            ("[1, {\"a\": 2", 11, "unexpected end of input"),
            ("{\"a\": [1 ", 9, "unexpected end of input"),
            ("[[]]]", 4, "trailing characters after the value"),
            ("01", 1, "trailing characters after the value"),
            ("1.", 2, "invalid number: no digit after the decimal point"),
            ("1e", 2, "invalid number: no digit in the exponent"),
            ("-", 1, "invalid number"),
            ("\"a\\x\"", 2, "invalid escape"),
            ("\"\\u12g4\"", 1, "invalid \\u escape"),
            ("\"a\nb\"", 2, "control character in a string"),
            ("\"abc", 4, "unterminated string"),
            ("tru", 0, "invalid literal"),
            ("{} {}", 3, "trailing characters after the value"),
        ] {
            assert_eq!(parse_document(bad), Err(JsonError { offset: at, reason }), "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(parse_document(&deep).map_err(|e| e.reason), Err("nesting too deep"));
        let ok = "[".repeat(128) + &"]".repeat(128);
        assert!(parse_document(&ok).is_ok());
    }

    #[test]
    fn members_items_lookup() {
        let doc = parse_document(
            r#"{ "a" : 1.50 , "b\u0022":{"c":[{"id":"x"},{"id":12345678901234567890123}]}, "a":"last"}"#,
        )
        .unwrap();
        assert_eq!(
            members(doc),
            vec![
                ("a", "1.50"),
                ("b\\u0022", r#"{"c":[{"id":"x"},{"id":12345678901234567890123}]}"#),
                ("a", "\"last\"")
            ]
        );
        assert_eq!(get(doc, "a"), Some("\"last\""));
        assert_eq!(get(doc, "b\""), Some(r#"{"c":[{"id":"x"},{"id":12345678901234567890123}]}"#));
        assert_eq!(lookup(doc, &["b\"", "c", "1", "id"]), Some("12345678901234567890123"));
        assert_eq!(lookup(doc, &["b\"", "c", "2", "id"]), None);
        assert_eq!(lookup(doc, &["a", "x"]), None);
        assert_eq!(items("[ 1 , [2,3] ,{}]"), vec!["1", "[2,3]", "{}"]);
        assert_eq!(items("[]"), Vec::<&str>::new());
        assert_eq!(members("{}"), vec![]);
        assert_eq!(parse_object(" { } "), Ok(vec![]));
        assert_eq!(parse_object("{\"k\" : [1] ,\"z\":{}}\n"), Ok(vec![("k", "[1]"), ("z", "{}")]));
        assert_eq!(parse_object("[1]").map_err(|e| e.reason), Err("not an object"));
        assert_eq!(parse_object("{\"a\":1} x").map_err(|e| e.reason), Err("trailing characters after the value"));
        assert_eq!(parse_object("{\"a\":1").map_err(|e| e.reason), Err("unexpected end of input"));
    }

    #[test]
    fn a_raw_key_is_compared_by_meaning() {
        // The definition: unescape, then compare.
        let by_meaning = |raw: &str, name: &str| unescape(raw) == name;
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            r"\\",
            r"\n",
            r"a\/",
            r"a\\",
            r"\u0061",
            r"\u0061b",
            r"a\u0062",
            r"\ud83d\ude00",
            r"\ud83d",
            r"\\\\",
            "é",
            r"\u00e9",
            "user",
            "user_count",
            r"user\u005fcount",
            r"\u0075ser",
            r"us\u0065r",
            "user_pad",
            r"usex\u0065",
        ];
        let names =
            ["", "a", "ab", "abc", "\\", "\n", "a/", r"a\/", "a\\", r"\n", "é", "😀", "\u{FFFD}", "user", "user_count"];
        for raw in keys {
            for name in names {
                assert_eq!(key_is(raw, name), by_meaning(raw, name), "{raw:?} against {name:?}");
            }
        }
        assert!(key_is(r"user\u005fcount", "user_count"));
        assert!(key_is(r"\u0075ser", "user"));
        assert!(key_is(r"us\u0065r", "user"));
        // The same bytes are not the same meaning when the key has an escape.
        assert!(!key_is(r"a\/", r"a\/"));
        assert!(key_is(r"a\/", "a/"));
        // Keys of eight bytes and more (compared eight at a time, then the rest).
        assert!(key_is("abcdefghij", "abcdefghij"));
        assert!(!key_is("abcdefghij", "abcdefgxij"));
        assert!(!key_is("abcdefghij", "abcdefghix"));
        assert!(!key_is(r"abcdef\/", r"abcdef\/"));
        assert!(!key_is(r"abcdefgh\/", r"abcdefgh\/"));
        assert!(key_is(r"abcdefgh\/", "abcdefgh/"));
    }

    proptest::proptest! {
        /// Keys made of plain bytes and escapes, against names of the same alphabet.
        #[test]
        fn key_is_unescapes_then_compares(
            raw in proptest::collection::vec(proptest::sample::select(&["a", "b", "é", r"\n", r"\/", r"\\", r"\u0061", r"\u00e9"][..]), 0..5),
            name in proptest::collection::vec(proptest::sample::select(&["a", "b", "é", "\n", "/", "\\"][..]), 0..5),
        ) {
            let (raw, name) = (raw.concat(), name.concat());
            proptest::prop_assert_eq!(key_is(&raw, &name), unescape(&raw) == name, "{:?} against {:?}", raw, name);
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(r"a\nb\u00e9\ud83d\ude00\/"), "a\nbé😀/");
        assert_eq!(unescape(r"\ud83d"), "\u{FFFD}");
        assert_eq!(scalar_text("\"x\\ty\""), Some(Cow::Borrowed("x\ty")));
        assert_eq!(scalar_text("1e3"), Some(Cow::Borrowed("1e3")));
        assert_eq!(scalar_text("null"), None);
        let mut out = Vec::new();
        write_string("a\"b\\c\n\u{1}é", &mut out);
        assert_eq!(out, b"\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\"");
    }
}
