//! Backend responses: decoding, shaping and merging, as KrakenD does it.
//!
//! Per backend, in KrakenD's order: decode by `encoding`, then `target`, then `allow`
//! or `deny` (allow wins), then `mapping`, then `group`. Parts then merge by top-level
//! key in backend declaration order, a later backend's key replacing an earlier one's
//! in the earlier one's place; the merged object is written in the endpoint's output
//! encoding.
//!
//! Nothing is converted that does not have to be: a decoded body is a list of members
//! whose values are ranges of the original text ([`Node::Raw`]); shaping only looks
//! into a value when a dotted `allow`/`deny`/`target` path goes through it. Untouched
//! values come out byte for byte (numbers, escapes, key order, whitespace inside).

pub mod flatmap;
mod xml;
mod yaml;

use std::borrow::Cow;

use crate::config::{Backend, Encoding, OutputEncoding};
use crate::gateway::json;

/// One member of an object under shaping.
pub type Entry<'a> = (Key<'a>, Node<'a>);

/// A key: raw (still escaped, from a body) or text (from the configuration or a decoder).
#[derive(Debug, Clone)]
pub enum Key<'a> {
    Raw(&'a str),
    Text(Cow<'a, str>),
}

impl Key<'_> {
    /// Whether this key means `name`.
    pub fn is(&self, name: &str) -> bool {
        match self {
            Key::Raw(raw) => json::key_is(raw, name),
            Key::Text(t) => t == name,
        }
    }

    /// The key's text, unescaped.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Key::Raw(raw) => json::unescape(raw),
            Key::Text(t) => Cow::Borrowed(t),
        }
    }

    fn same(&self, other: &Key<'_>) -> bool {
        match (self, other) {
            // The same raw bytes mean the same; different ones differ unless one has an escape.
            (Key::Raw(a), Key::Raw(b)) => {
                a == b || ((a.contains('\\') || b.contains('\\')) && self.text() == other.text())
            }
            (Key::Raw(raw), Key::Text(text)) | (Key::Text(text), Key::Raw(raw)) => json::key_is(raw, text),
            (Key::Text(a), Key::Text(b)) => a == b,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Key::Raw(raw) => {
                out.push(b'"');
                out.extend_from_slice(raw.as_bytes());
                out.push(b'"');
            }
            Key::Text(t) => json::write_string(t, out),
        }
    }
}

/// A value under shaping.
#[derive(Debug, Clone)]
pub enum Node<'a> {
    /// A validated JSON value, copied out as it came.
    Raw(&'a str),
    /// A scalar JSON value made by the gateway (a status code in error details).
    Number(u64),
    /// A string to be escaped on output (from the `string`, `xml` and `rss` decoders).
    Str(Cow<'a, str>),
    Obj(Vec<Entry<'a>>),
    Arr(Vec<Node<'a>>),
}

impl<'a> Node<'a> {
    /// The members of an object node; the node back if it is not an object.
    fn into_members(self) -> Result<Vec<Entry<'a>>, Node<'a>> {
        match self {
            Node::Obj(entries) => Ok(entries),
            Node::Raw(raw) if json::kind(raw) == json::Kind::Object => Ok(raw_members(raw)),
            other => Err(other),
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Raw(raw) => out.extend_from_slice(raw.as_bytes()),
            Node::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Node::Str(s) => json::write_string(s, out),
            Node::Obj(entries) => write_object(entries, out),
            Node::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
        }
    }
}

fn raw_members(raw: &str) -> Vec<Entry<'_>> {
    let mut out = Vec::with_capacity(8);
    json::for_each_member(raw, |k, v| out.push((Key::Raw(k), Node::Raw(v))));
    out
}

/// Writes members as a JSON object.
pub fn write_object(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        k.write(out);
        out.push(b':');
        v.write(out);
    }
    out.push(b'}');
}

/// A member of an object as the XML and YAML writers see it: text key, value.
type Member<'n, 'a> = (Cow<'n, str>, Cow<'n, Node<'a>>);

/// A value seen as a document tree by the XML and YAML writers, which write an
/// object's members in key order (as KrakenD's Go maps come out).
enum Tree<'n, 'a> {
    Map(Vec<Member<'n, 'a>>),
    List(Vec<Cow<'n, Node<'a>>>),
    Text(Cow<'n, str>),
    /// A number's JSON text.
    Number(Cow<'n, str>),
    Bool(bool),
    Null,
}

impl Tree<'_, '_> {
    /// A scalar's text (`true`, a number as written); empty for null and containers.
    fn text(&self) -> Cow<'_, str> {
        match self {
            Tree::Text(t) | Tree::Number(t) => Cow::Borrowed(t.as_ref()),
            Tree::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            _ => Cow::Borrowed(""),
        }
    }
}

/// Members sorted by key (byte order, as Go sorts strings); of a repeated key the
/// last one stays, as a Go map keeps it.
fn sorted<'n, 'a>(members: impl Iterator<Item = Member<'n, 'a>>) -> Vec<Member<'n, 'a>> {
    let mut all: Vec<Member<'n, 'a>> = members.collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Member<'n, 'a>> = Vec::with_capacity(all.len());
    for m in all {
        match out.last_mut() {
            Some(last) if last.0 == m.0 => *last = m,
            _ => out.push(m),
        }
    }
    out
}

fn tree<'n, 'a: 'n>(node: &'n Node<'a>) -> Tree<'n, 'a> {
    match node {
        Node::Number(n) => Tree::Number(Cow::Owned(n.to_string())),
        Node::Str(s) => Tree::Text(Cow::Borrowed(s.as_ref())),
        Node::Obj(entries) => Tree::Map(sorted(entries.iter().map(|(k, v)| (k.text(), Cow::Borrowed(v))))),
        Node::Arr(items) => Tree::List(items.iter().map(Cow::Borrowed).collect()),
        Node::Raw(raw) => match json::kind(raw) {
            json::Kind::Object => Tree::Map(sorted(
                json::members(raw).into_iter().map(|(k, v)| (json::unescape(k), Cow::Owned(Node::Raw(v)))),
            )),
            json::Kind::Array => Tree::List(json::items(raw).into_iter().map(|i| Cow::Owned(Node::Raw(i))).collect()),
            json::Kind::String => Tree::Text(json::scalar_text(raw).unwrap_or_default()),
            json::Kind::Number => Tree::Number(Cow::Borrowed(*raw)),
            json::Kind::Bool => Tree::Bool(raw.starts_with('t')),
            json::Kind::Null => Tree::Null,
        },
    }
}

fn is_object(node: &Node<'_>) -> bool {
    match node {
        Node::Obj(_) => true,
        Node::Raw(raw) => json::kind(raw) == json::Kind::Object,
        _ => false,
    }
}

fn is_container(node: &Node<'_>) -> bool {
    match node {
        Node::Obj(_) | Node::Arr(_) => true,
        Node::Raw(raw) => matches!(json::kind(raw), json::Kind::Object | json::Kind::Array),
        _ => false,
    }
}

/// A set of dotted paths as a tree: `["a.b", "a.c", "d"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PathTree {
    children: Vec<(String, PathTree)>,
    /// The path ends here: the whole value is meant.
    leaf: bool,
}

impl PathTree {
    fn build(paths: &[String]) -> Option<PathTree> {
        if paths.is_empty() {
            return None;
        }
        let mut root = PathTree::default();
        for p in paths {
            let mut node = &mut root;
            for step in p.split('.') {
                let i = match node.children.iter().position(|(n, _)| n == step) {
                    Some(i) => i,
                    None => {
                        node.children.push((step.to_string(), PathTree::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
            }
            node.leaf = true;
        }
        Some(root)
    }

    fn child(&self, key: &Key<'_>) -> Option<&PathTree> {
        self.children.iter().find(|(n, _)| key.is(n)).map(|(_, t)| t)
    }
}

/// How one backend's response is decoded and shaped, compiled from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub encoding: Encoding,
    pub is_collection: bool,
    target: Vec<String>,
    allow: Option<PathTree>,
    deny: Option<PathTree>,
    mapping: Vec<(String, String)>,
    group: Option<String>,
    /// `proxy.flatmap_filter`: in place of allow, deny and mapping (as lura).
    flatmap: Vec<crate::config::FlatmapOp>,
}

/// Why a backend body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Shape {
    pub fn new(b: &Backend) -> Shape {
        Shape {
            encoding: b.encoding,
            is_collection: b.is_collection,
            target: b.target.as_deref().map(|t| t.split('.').map(str::to_string).collect()).unwrap_or_default(),
            allow: PathTree::build(&b.allow),
            // allow wins: a deny list beside an allow list is ignored (as KrakenD).
            deny: if b.allow.is_empty() { PathTree::build(&b.deny) } else { None },
            mapping: b.mapping.clone(),
            group: b.group.clone(),
            flatmap: b.flatmap.clone(),
        }
    }

    /// A shape that decodes with `encoding` and changes nothing.
    pub fn plain(encoding: Encoding) -> Shape {
        Shape {
            encoding,
            is_collection: false,
            target: Vec::new(),
            allow: None,
            deny: None,
            mapping: Vec::new(),
            group: None,
            flatmap: Vec::new(),
        }
    }

    /// Decodes and shapes a body: the part this backend adds to the merge.
    pub fn apply<'a>(&'a self, body: &'a [u8]) -> Result<Vec<Entry<'a>>, DecodeError> {
        // A no-op answer is neither decoded nor shaped (lura gives it no formatter):
        // it adds nothing, even under `group`.
        if self.encoding == Encoding::NoOp {
            return Ok(Vec::new());
        }
        let decoded = self.decode(body)?;
        Ok(self.shape(decoded))
    }

    /// Decodes a body by `encoding` into the members of an object.
    pub fn decode<'a>(&self, body: &'a [u8]) -> Result<Vec<Entry<'a>>, DecodeError> {
        let text = || simdutf8::basic::from_utf8(body).map_err(|_| DecodeError("body is not UTF-8".into()));
        let bad = |e: json::JsonError| DecodeError(e.to_string());
        match self.encoding {
            Encoding::Json | Encoding::FastJson if self.is_collection => {
                let doc = json::parse_document(text()?).map_err(bad)?;
                if json::kind(doc) != json::Kind::Array {
                    return Err(DecodeError("is_collection is set but the body is not an array".into()));
                }
                Ok(vec![(Key::Text(Cow::Borrowed("collection")), Node::Raw(doc))])
            }
            Encoding::Json | Encoding::FastJson => {
                let mut entries = Vec::with_capacity(16);
                json::parse_object_with(text()?, |k, v| entries.push((Key::Raw(k), Node::Raw(v)))).map_err(bad)?;
                Ok(entries)
            }
            Encoding::SafeJson => {
                let doc = json::parse_document(text()?).map_err(bad)?;
                Ok(match json::kind(doc) {
                    json::Kind::Object => raw_members(doc),
                    json::Kind::Array => vec![(Key::Text(Cow::Borrowed("collection")), Node::Raw(doc))],
                    _ => vec![(Key::Text(Cow::Borrowed("content")), Node::Raw(doc))],
                })
            }
            Encoding::String => {
                Ok(vec![(Key::Text(Cow::Borrowed("content")), Node::Str(String::from_utf8_lossy(body)))])
            }
            Encoding::Xml | Encoding::Rss => xml::decode(text()?).map_err(DecodeError),
            // Not decoded: a no-op backend of an aggregating endpoint adds nothing.
            Encoding::NoOp => Ok(Vec::new()),
        }
    }

    /// target, allow or deny, mapping, group: in that order (with a flatmap filter:
    /// target, the filter, group).
    pub fn shape<'a>(&'a self, mut entries: Vec<Entry<'a>>) -> Vec<Entry<'a>> {
        for step in &self.target {
            let found = entries.into_iter().rev().find(|(k, _)| k.is(step));
            entries = match found.map(|(_, v)| v.into_members()) {
                Some(Ok(members)) => members,
                // A missing or non-object target leaves an empty object (as KrakenD).
                _ => Vec::new(),
            };
        }
        if !self.flatmap.is_empty() {
            match flatmap::apply(&self.flatmap, entries) {
                Some(e) => entries = e,
                // Nothing left: lura's nil data, `null` under a group.
                None => {
                    return match &self.group {
                        Some(group) => vec![(Key::Text(Cow::Borrowed(group)), Node::Raw("null"))],
                        None => Vec::new(),
                    };
                }
            }
        } else if let Some(allow) = &self.allow {
            entries = keep_allowed(entries, allow);
        } else if let Some(deny) = &self.deny {
            entries = drop_denied(entries, deny);
        }
        if self.flatmap.is_empty() && !self.mapping.is_empty() {
            entries = rename(entries, &self.mapping);
        }
        if let Some(group) = &self.group {
            entries = vec![(Key::Text(Cow::Borrowed(group)), Node::Obj(entries))];
        }
        entries
    }
}

fn keep_allowed<'a>(entries: Vec<Entry<'a>>, tree: &PathTree) -> Vec<Entry<'a>> {
    entries
        .into_iter()
        .filter_map(|(k, v)| {
            let sub = tree.child(&k)?;
            if sub.leaf {
                return Some((k, v));
            }
            // A path through a non-object drops it; an object left empty goes too.
            let kept = keep_allowed(v.into_members().ok()?, sub);
            (!kept.is_empty()).then_some((k, Node::Obj(kept)))
        })
        .collect()
}

fn drop_denied<'a>(entries: Vec<Entry<'a>>, tree: &PathTree) -> Vec<Entry<'a>> {
    entries
        .into_iter()
        .filter_map(|(k, v)| match tree.child(&k) {
            None => Some((k, v)),
            Some(sub) if sub.leaf => None,
            Some(sub) => match v.into_members() {
                Ok(members) => Some((k, Node::Obj(drop_denied(members, sub)))),
                Err(v) => Some((k, v)),
            },
        })
        .collect()
}

/// Renames top-level keys, each original key at most once (so `{"a":"b","b":"a"}`
/// swaps). A renamed key replaces an existing key of the same name, as KrakenD's
/// map assignment does, and keeps its own position. In place: a member is dropped
/// when its key is some mapping's target and no mapping's source, then the sources
/// are renamed.
fn rename<'a>(mut entries: Vec<Entry<'a>>, mapping: &'a [(String, String)]) -> Vec<Entry<'a>> {
    let source = |k: &Key<'_>| mapping.iter().find(|(from, _)| k.is(from)).map(|(_, to)| to);
    entries.retain(|(k, _)| source(k).is_some() || !mapping.iter().any(|(_, to)| k.is(to)));
    for (k, _) in &mut entries {
        if let Some(to) = source(k) {
            *k = Key::Text(Cow::Borrowed(to));
        }
    }
    entries
}

/// Merges parts in order: a later part's key replaces an earlier one's value in place.
pub fn merge<'a>(parts: impl IntoIterator<Item = Vec<Entry<'a>>>) -> Vec<Entry<'a>> {
    let mut parts = parts.into_iter();
    let mut out = parts.next().unwrap_or_default();
    for part in parts {
        for (k, v) in part {
            match out.iter_mut().find(|(existing, _)| existing.same(&k)) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
    }
    out
}

/// Content types of the rendered outputs (KrakenD's: gin's JSON and YAML renderers,
/// krakend-xml's).
pub const JSON: &str = "application/json; charset=utf-8";
pub const XML: &str = "application/xml";
pub const YAML: &str = "application/yaml; charset=utf-8";
pub use crate::request::TEXT;

/// Writes merged members in an output encoding; returns the content type.
/// - `json`: the object;
/// - `json-collection`: the value of `collection`, `[]` without one;
/// - `string`: the text of `content`, empty without a string there;
/// - `xml`: as KrakenD's XML renderer (see `xml::encode`); `yaml`: as gin's (see `yaml`);
/// - `negotiate`: by `Accept`, see [`negotiate`].
///
/// `no-op` is streamed, never rendered: it is written as `json` here.
pub fn render(output: OutputEncoding, accept: Option<&str>, entries: &[Entry<'_>], out: &mut Vec<u8>) -> &'static str {
    let output = match output {
        OutputEncoding::Negotiate => negotiate(accept.unwrap_or("")),
        o => o,
    };
    match output {
        OutputEncoding::JsonCollection => {
            match entries.iter().rev().find(|(k, _)| k.is("collection")) {
                Some((_, v)) => v.write(out),
                None => out.extend_from_slice(b"[]"),
            }
            JSON
        }
        OutputEncoding::String => {
            match entries.iter().rev().find(|(k, _)| k.is("content")).map(|(_, v)| v) {
                Some(Node::Str(s)) => out.extend_from_slice(s.as_bytes()),
                Some(Node::Raw(raw)) if json::kind(raw) == json::Kind::String => {
                    out.extend_from_slice(json::scalar_text(raw).unwrap_or_default().as_bytes())
                }
                _ => {}
            }
            TEXT
        }
        OutputEncoding::Xml => {
            xml::encode(entries, out);
            XML
        }
        OutputEncoding::Yaml => {
            yaml::encode(entries, out);
            YAML
        }
        _ => {
            write_object(entries, out);
            JSON
        }
    }
}

/// Picks an output by `Accept` as KrakenD does (gin's `NegotiateFormat` over JSON,
/// `text/plain`, XML and `application/x-yaml`): the first media range that matches
/// one of them, in that order, wins; `*` matches from where it stands (`*/*` is JSON,
/// `text/*` plain text); `text/plain` and `application/x-yaml` are answered in YAML;
/// JSON when nothing matches or there is no `Accept`. One difference, deliberate:
/// ranges are tried by their `q`, highest first (gin ignores `q`), and `q=0` is never
/// chosen; ranges without `q` keep gin's order.
pub fn negotiate(accept: &str) -> OutputEncoding {
    const OFFERS: [(&str, OutputEncoding); 4] = [
        ("application/json", OutputEncoding::Json),
        ("text/plain", OutputEncoding::Yaml),
        ("application/xml", OutputEncoding::Xml),
        ("application/x-yaml", OutputEncoding::Yaml),
    ];
    let mut ranges: Vec<(&str, f32)> = accept
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!media.is_empty() && q > 0.0).then_some((media, q))
        })
        .collect();
    if ranges.is_empty() {
        return OutputEncoding::Json;
    }
    ranges.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (media, _) in ranges {
        let media = media.as_bytes();
        for (offer, encoding) in OFFERS {
            let offer = offer.as_bytes();
            let mut i = 0;
            while i < media.len() && i < offer.len() {
                if media[i] == b'*' {
                    return encoding;
                }
                if !media[i].eq_ignore_ascii_case(&offer[i]) {
                    break;
                }
                i += 1;
            }
            if i == media.len() {
                return encoding;
            }
        }
    }
    OutputEncoding::Json
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body is checked as UTF-8 whole before it is decoded (simdutf8): what is not
    /// UTF-8 is refused wherever it is, at any length, and every valid text passes.
    #[test]
    fn bodies_that_are_not_utf8_are_refused() {
        let shape = Shape::plain(Encoding::Json);
        let refused = |body: &[u8]| match shape.apply(body) {
            Err(DecodeError(why)) => why == "body is not UTF-8",
            Ok(_) => false,
        };
        let pad = "x".repeat(100);
        for bad in [&b"\xff"[..], b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"] {
            for at in [0, 5, 70] {
                let mut body = format!("{{\"a\":\"{}", &pad[..at]).into_bytes();
                body.extend_from_slice(bad);
                body.extend_from_slice(format!("{}\"}}", &pad[at..]).as_bytes());
                assert!(refused(&body), "{bad:?} after {at}");
            }
        }
        let good = format!("{{\"a\":\"{pad}é€😀\",\"b\":\"{pad}\"}}");
        let part = shape.apply(good.as_bytes()).unwrap();
        let mut out = Vec::new();
        render(OutputEncoding::Json, None, &merge([part]), &mut out);
        assert_eq!(out, good.as_bytes());
    }

    /// Keys merge by meaning: the same bytes, the same text after escapes, or a
    /// configured name (a group) against a backend's raw key.
    #[test]
    fn merged_keys_are_compared_by_meaning() {
        let shape = Shape::plain(Encoding::Json);
        let parts = [
            shape.apply(br#"{"a":1,"b\/":2,"c":3,"\u0064":4}"#).unwrap(),
            shape.apply(br#"{"\u0061":5,"b/":6,"c":7,"d":8,"e":9}"#).unwrap(),
            vec![(Key::Text(Cow::Borrowed("e")), Node::Raw("10")), (Key::Text(Cow::Borrowed("f")), Node::Raw("11"))],
            shape.apply(br#"{"f":12,"c\"":13}"#).unwrap(),
        ];
        let mut out = Vec::new();
        render(OutputEncoding::Json, None, &merge(parts), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":5,"b\/":6,"c":7,"\u0064":8,"e":10,"f":12,"c\"":13}"#);
    }

    #[test]
    fn path_trees() {
        let t = PathTree::build(&["a.b".into(), "a.c".into(), "d".into()]).unwrap();
        assert_eq!(t.children.len(), 2);
        assert!(t.children[1].1.leaf);
        assert_eq!(t.children[0].1.children.len(), 2);
        assert_eq!(PathTree::build(&[]), None);
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate("application/xml"), OutputEncoding::Xml);
        assert_eq!(negotiate("text/plain;q=0.5, application/json;q=0.9"), OutputEncoding::Json);
        // gin's matching: text/xml is none of its offers; text/* is plain text (YAML).
        assert_eq!(negotiate("text/html, text/xml;q=0.2"), OutputEncoding::Json);
        assert_eq!(negotiate("text/html, text/*"), OutputEncoding::Yaml);
        assert_eq!(negotiate("text/plain"), OutputEncoding::Yaml);
        assert_eq!(negotiate("application/x-yaml"), OutputEncoding::Yaml);
        assert_eq!(negotiate("application/yaml"), OutputEncoding::Json);
        assert_eq!(negotiate("text/plain, application/xml"), OutputEncoding::Yaml);
        assert_eq!(negotiate("application/*"), OutputEncoding::Json);
        assert_eq!(negotiate("image/png"), OutputEncoding::Json);
        assert_eq!(negotiate(""), OutputEncoding::Json);
        assert_eq!(negotiate("application/xml;q=0, */*"), OutputEncoding::Json);
        assert_eq!(negotiate("application/xml;q=0.1, text/plain;q=0.2"), OutputEncoding::Yaml);
    }
}
