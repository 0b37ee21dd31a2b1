//! XML bodies to JSON (the `xml` and `rss` encodings) and JSON to XML (the `xml`
//! output encoding).
//!
//! Reading follows the convention KrakenD users know from its XML decoder: the root
//! element becomes the one top-level key; attributes become `-name` keys, an element's
//! text `#text` when it also has attributes or children, or the element's whole value
//! when it has neither; repeated child elements become an array. Every value is a
//! string (no guessing of numbers). Text is trimmed; comments, processing instructions
//! and the doctype are dropped; entities other than XML's five predefined ones and
//! character references are refused, so no external entity is ever read.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::{Entry, Key, Node};
use crate::gateway::json::{self, Kind, MAX_DEPTH};

struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    /// Children in order, repeated names gathered: (name, values).
    children: Vec<(String, Vec<Node<'static>>)>,
    text: String,
}

impl Element {
    fn open(e: &BytesStart<'_>) -> Result<Element, String> {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|e| format!("invalid XML attribute: {e}"))?;
            let value = a.unescape_value().map_err(|e| format!("invalid XML attribute value: {e}"))?;
            attrs.push((format!("-{}", String::from_utf8_lossy(a.key.as_ref())), value.into_owned()));
        }
        Ok(Element { name, attrs, children: Vec::new(), text: String::new() })
    }

    fn add_child(&mut self, name: String, node: Node<'static>) {
        match self.children.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(node),
            None => self.children.push((name, vec![node])),
        }
    }

    fn close(self) -> (String, Node<'static>) {
        let text = self.text.trim();
        if self.attrs.is_empty() && self.children.is_empty() {
            return (self.name, Node::Str(Cow::Owned(text.to_string())));
        }
        let mut entries: Vec<Entry<'static>> = Vec::with_capacity(self.attrs.len() + self.children.len() + 1);
        for (k, v) in self.attrs {
            entries.push((Key::Text(Cow::Owned(k)), Node::Str(Cow::Owned(v))));
        }
        for (k, mut values) in self.children {
            let node = if values.len() == 1 { values.remove(0) } else { Node::Arr(values) };
            entries.push((Key::Text(Cow::Owned(k)), node));
        }
        if !text.is_empty() {
            entries.push((Key::Text(Cow::Borrowed("#text")), Node::Str(Cow::Owned(text.to_string()))));
        }
        (self.name, Node::Obj(entries))
    }
}

/// Decodes an XML document into `{"root": ...}`.
pub(crate) fn decode(text: &str) -> Result<Vec<Entry<'static>>, String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, Node<'static>)> = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("invalid XML: {e}"))?;
        match event {
            Event::Start(e) => {
                if root.is_some() {
                    return Err("invalid XML: more than one root element".into());
                }
                if stack.len() >= MAX_DEPTH as usize {
                    return Err("invalid XML: nesting too deep".into());
                }
                stack.push(Element::open(&e)?);
            }
            Event::Empty(e) => {
                if root.is_some() {
                    return Err("invalid XML: more than one root element".into());
                }
                let (name, node) = Element::open(&e)?.close();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, node),
                    None => root = Some((name, node)),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err("invalid XML: unexpected end tag".into());
                };
                let (name, node) = done.close();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, node),
                    None => root = Some((name, node)),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("invalid XML text: {e}"))?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err("invalid XML: text outside the root element".into()),
                }
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| format!("invalid XML text: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    let name = r.decode().map_err(|e| format!("invalid XML: {e}"))?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_string)
                };
                let Some(c) = c else {
                    return Err("invalid XML: unknown entity (only the predefined ones are read)".into());
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("invalid XML: unclosed element".into());
    }
    let Some((name, node)) = root else {
        return Err("invalid XML: no root element".into());
    };
    Ok(vec![(Key::Text(Cow::Owned(name)), node)])
}

/// Writes a merged response as an XML document: `<response>` holds the members;
/// `-name` members become attributes and `#text` text, as the reader takes them, and
/// arrays repeat their element. Names that are not XML names have their offending
/// characters replaced by `_`.
pub(crate) fn encode(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    write_members("response", entries, out, 0);
}

fn write_element(name: &str, node: &Node<'_>, out: &mut Vec<u8>, depth: u32) {
    if let Node::Arr(items) = node {
        for item in items {
            write_element(name, item, out, depth + 1);
        }
        return;
    }
    if let Node::Raw(raw) = node
        && json::kind(raw) == Kind::Array
    {
        for item in json::items(raw) {
            write_element(name, &Node::Raw(item), out, depth + 1);
        }
        return;
    }
    let members: Vec<Entry<'_>> = match node {
        Node::Obj(entries) => return write_members(name, entries, out, depth),
        Node::Raw(raw) if json::kind(raw) == Kind::Object => {
            json::members(raw).into_iter().map(|(k, v)| (Key::Raw(k), Node::Raw(v))).collect()
        }
        _ => {
            let name = xml_name(name);
            out.push(b'<');
            out.extend_from_slice(name.as_bytes());
            out.push(b'>');
            write_text(node, out);
            close(&name, out);
            return;
        }
    };
    write_members(name, &members, out, depth);
}

/// An element from an object's members: `-name` attributes, `#text`, child elements.
fn write_members(name: &str, members: &[Entry<'_>], out: &mut Vec<u8>, depth: u32) {
    let name = xml_name(name);
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    for (k, v) in members {
        let k = k.text();
        if let Some(attr) = k.strip_prefix('-') {
            out.push(b' ');
            out.extend_from_slice(xml_name(attr).as_bytes());
            out.extend_from_slice(b"=\"");
            write_text(v, out);
            out.push(b'"');
        }
    }
    out.push(b'>');
    if depth < MAX_DEPTH {
        for (k, v) in members {
            let k = k.text();
            if k == "#text" {
                write_text(v, out);
            } else if !k.starts_with('-') {
                write_element(&k, v, out, depth + 1);
            }
        }
    }
    close(&name, out);
}

fn close(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

/// A scalar's text, XML-escaped. null is empty; containers are not text.
fn write_text(node: &Node<'_>, out: &mut Vec<u8>) {
    let text: Cow<'_, str> = match node {
        Node::Str(s) => Cow::Borrowed(s.as_ref()),
        Node::Raw(raw) => json::scalar_text(raw).unwrap_or_default(),
        Node::Number(n) => Cow::Owned(n.to_string()),
        _ => Cow::Borrowed(""),
    };
    out.extend_from_slice(quick_xml::escape::escape(text.as_ref()).as_bytes());
}

fn xml_name(name: &str) -> Cow<'_, str> {
    let ok = |i: usize, c: char| c.is_alphabetic() || c == '_' || (i > 0 && (c.is_alphanumeric() || "-.".contains(c)));
    if !name.is_empty() && name.chars().enumerate().all(|(i, c)| ok(i, c)) {
        return Cow::Borrowed(name);
    }
    let fixed: String = name.chars().enumerate().map(|(i, c)| if ok(i, c) { c } else { '_' }).collect();
    Cow::Owned(if fixed.is_empty() { "_".to_string() } else { fixed })
}
