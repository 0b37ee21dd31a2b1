//! `{placeholder}` templates, as used by endpoint paths and backend `url_pattern`s.

use super::BadValue;

/// A piece of a template: literal text or the name inside `{...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Literal(&'a str),
    Var(&'a str),
}

/// Splits a template into literal text and `{names}`. Braces do not nest and must pair.
pub fn pieces(template: &str) -> Result<Vec<Piece<'_>>, BadValue> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes().get(open) == Some(&b'}') {
            return Err(BadValue(format!("unmatched \"}}\" in {template:?}")));
        }
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after.find(['{', '}']).filter(|&i| after.as_bytes().get(i) == Some(&b'}'));
        let Some(close) = close else {
            return Err(BadValue(format!("unclosed \"{{\" in {template:?}")));
        };
        let name = &after[..close];
        if name.is_empty() {
            return Err(BadValue(format!("empty placeholder \"{{}}\" in {template:?}")));
        }
        out.push(Piece::Var(name));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest));
    }
    Ok(out)
}

/// What a `{name}` in a `url_pattern` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder<'a> {
    /// `{id}`: a parameter of the endpoint path.
    Param(&'a str),
    /// `{input_headers.X-Tenant}`: a header of the client request.
    InputHeader(&'a str),
    /// `{resp0_user.id}`: a field of an earlier backend's response (sequential proxy).
    Response { index: usize, path: &'a str },
    /// `{JWT.sub}`: a top-level claim of the request's token (`auth/validator`).
    Jwt(&'a str),
}

impl<'a> Placeholder<'a> {
    pub fn classify(name: &'a str) -> Placeholder<'a> {
        if let Some(header) = name.strip_prefix("input_headers.") {
            return Placeholder::InputHeader(header);
        }
        if let Some(claim) = name.strip_prefix("JWT.") {
            return Placeholder::Jwt(claim);
        }
        if let Some(rest) = name.strip_prefix("resp") {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0
                && let (Ok(index), Some(path)) = (rest[..digits].parse(), rest[digits..].strip_prefix('_'))
                && !path.is_empty()
            {
                return Placeholder::Response { index, path };
            }
        }
        Placeholder::Param(name)
    }
}

/// Whether `name` is a valid endpoint parameter name: ASCII letters, digits, `_` and `-`.
pub fn is_param_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks that every `{var}` of a path fills a whole segment (KrakenD's RESTful rule).
/// Returns the first offending placeholder.
pub fn first_partial_segment_var<'a>(pieces: &[Piece<'a>]) -> Option<&'a str> {
    for (i, piece) in pieces.iter().enumerate() {
        if let Piece::Var(name) = piece {
            let before_ok = match i.checked_sub(1).and_then(|j| pieces.get(j)) {
                Some(Piece::Literal(lit)) => lit.ends_with('/'),
                _ => false,
            };
            let after_ok = match pieces.get(i + 1) {
                None => true,
                Some(Piece::Literal(lit)) => lit.starts_with('/'),
                Some(Piece::Var(_)) => false,
            };
            if !(before_ok && after_ok) {
                return Some(name);
            }
        }
    }
    None
}

/// The first `{var}` of a backend `url_pattern` that does not start a path segment.
/// KrakenD (lura) substitutes a placeholder only right after a `/` unless
/// `disable_rest`: `/schedule/{id}.rss` is one, `/file.{ext}` is not (lura would send
/// `{ext}` as it is written).
pub fn first_var_not_starting_a_segment<'a>(pieces: &[Piece<'a>]) -> Option<&'a str> {
    pieces.iter().enumerate().find_map(|(i, piece)| match (piece, i.checked_sub(1).and_then(|j| pieces.get(j))) {
        (Piece::Var(_), Some(Piece::Literal(lit))) if lit.ends_with('/') => None,
        (Piece::Var(name), _) => Some(*name),
        (Piece::Literal(_), _) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_pattern_placeholders_start_a_segment() {
        let first = |t| first_var_not_starting_a_segment(&pieces(t).unwrap());
        assert_eq!(first("/user/schedule/{id}.rss"), None);
        assert_eq!(first("/a/{x}/{y}"), None);
        assert_eq!(first("/file.{ext}"), Some("ext"));
        assert_eq!(first("/a/{x}{y}"), Some("y"));
        assert_eq!(first("{x}/a"), Some("x"));
    }

    #[test]
    fn splits_templates() {
        assert_eq!(
            pieces("/a/{id}/b.{ext}"),
            Ok(vec![Piece::Literal("/a/"), Piece::Var("id"), Piece::Literal("/b."), Piece::Var("ext")])
        );
        assert_eq!(pieces("/plain"), Ok(vec![Piece::Literal("/plain")]));
        assert_eq!(pieces("/a/{id"), Err("unclosed \"{\" in \"/a/{id\"".into()));
        assert_eq!(pieces("/a/{i{d}"), Err("unclosed \"{\" in \"/a/{i{d}\"".into()));
        assert_eq!(pieces("/a/id}"), Err("unmatched \"}\" in \"/a/id}\"".into()));
        assert_eq!(pieces("/a/{}"), Err("empty placeholder \"{}\" in \"/a/{}\"".into()));
    }

    #[test]
    fn classifies_placeholders() {
        assert_eq!(Placeholder::classify("id"), Placeholder::Param("id"));
        assert_eq!(Placeholder::classify("input_headers.X-Tenant"), Placeholder::InputHeader("X-Tenant"));
        assert_eq!(Placeholder::classify("resp0_items.0.id"), Placeholder::Response { index: 0, path: "items.0.id" });
        assert_eq!(Placeholder::classify("resp12_x"), Placeholder::Response { index: 12, path: "x" });
        assert_eq!(Placeholder::classify("resp_x"), Placeholder::Param("resp_x"));
        assert_eq!(Placeholder::classify("resp1_"), Placeholder::Param("resp1_"));
        assert_eq!(Placeholder::classify("response"), Placeholder::Param("response"));
        assert_eq!(Placeholder::classify("JWT.sub"), Placeholder::Jwt("sub"));
        assert_eq!(Placeholder::classify("jwt.sub"), Placeholder::Param("jwt.sub"));
    }

    #[test]
    fn restful_rule() {
        let ok = pieces("/a/{id}/{x}").unwrap();
        assert_eq!(first_partial_segment_var(&ok), None);
        let bad = pieces("/file.{ext}").unwrap();
        assert_eq!(first_partial_segment_var(&bad), Some("ext"));
        let bad = pieces("/{a}{b}").unwrap();
        assert_eq!(first_partial_segment_var(&bad), Some("a"));
    }
}
