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

use super::{Entry, Key, Member, Node, Tree, is_container, is_object, sorted, tree};
use crate::gateway::json::MAX_DEPTH;

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

/// Writes a merged response as KrakenD writes it (its XML renderer, mxj's map
/// encoder): no declaration; a lone top-level key is the root element (unless its value
/// is a list holding anything but objects), otherwise `<doc>` holds the members.
/// Members are written in key order, as Go's maps are; `-name` members become
/// attributes and `#text` text, as the reader takes them; a list repeats its element;
/// an empty value, an empty list or an element with nothing but attributes closes
/// itself (`<a/>`). Names that are not XML names have their offending characters
/// replaced by `_` (mxj writes them as they are, which is not XML).
pub(crate) fn encode(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    let members = sorted(entries.iter().map(|(k, v)| (k.text(), Cow::Borrowed(v))));
    if let [(key, value)] = members.as_slice() {
        let lone = match tree(value) {
            Tree::List(items) => items.iter().all(|i| is_object(i)),
            _ => true,
        };
        if lone {
            write_element(key, value, out, 0);
            return;
        }
    }
    write_map("doc", &members, out, 0);
}

fn write_element(name: &str, node: &Node<'_>, out: &mut Vec<u8>, depth: u32) {
    match tree(node) {
        Tree::List(items) if items.is_empty() => empty(name, out),
        Tree::List(items) => {
            for item in &items {
                write_element(name, item, out, depth + 1);
            }
        }
        Tree::Map(members) => write_map(name, &members, out, depth),
        Tree::Null => empty(name, out),
        scalar => {
            let text = scalar.text();
            if text.is_empty() {
                return empty(name, out);
            }
            let name = xml_name(name);
            out.push(b'<');
            out.extend_from_slice(name.as_bytes());
            out.push(b'>');
            escape(&text, out);
            close(&name, out);
        }
    }
}

fn empty(name: &str, out: &mut Vec<u8>) {
    out.push(b'<');
    out.extend_from_slice(xml_name(name).as_bytes());
    out.extend_from_slice(b"/>");
}

/// An element from an object's members: `-name` attributes, `#text`, child elements.
fn write_map(name: &str, members: &[Member<'_, '_>], out: &mut Vec<u8>, depth: u32) {
    let name = xml_name(name);
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    let is_attr = |k: &str, v: &Node<'_>| k.len() > 1 && k.starts_with('-') && !is_container(v);
    for (k, v) in members {
        if is_attr(k, v) {
            out.push(b' ');
            out.extend_from_slice(xml_name(&k[1..]).as_bytes());
            out.extend_from_slice(b"=\"");
            escape(&tree(v).text(), out);
            out.push(b'"');
        }
    }
    let text = members.iter().find(|(k, _)| k == "#text");
    let mut children = members.iter().filter(|(k, v)| k != "#text" && !is_attr(k, v)).peekable();
    if text.is_none() && children.peek().is_none() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    if let Some((_, t)) = text {
        escape(&tree(t).text(), out);
    }
    if depth < MAX_DEPTH {
        for (k, v) in children {
            // An attribute holding an object or a list is written as a child element
            // (mxj gives up on the whole document).
            let k = if k.len() > 1 && k.starts_with('-') { &k[1..] } else { k.as_ref() };
            write_element(k, v, out, depth + 1);
        }
    }
    close(&name, out);
}

fn close(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

/// XML-escapes text: `&`, `<`, `>`, `"` and `'`, as KrakenD's renderer does.
fn escape(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(quick_xml::escape::escape(text).as_bytes());
}

fn xml_name(name: &str) -> Cow<'_, str> {
    let ok = |i: usize, c: char| c.is_alphabetic() || c == '_' || (i > 0 && (c.is_alphanumeric() || "-.".contains(c)));
    if !name.is_empty() && name.chars().enumerate().all(|(i, c)| ok(i, c)) {
        return Cow::Borrowed(name);
    }
    let fixed: String = name.chars().enumerate().map(|(i, c)| if ok(i, c) { c } else { '_' }).collect();
    Cow::Owned(if fixed.is_empty() { "_".to_string() } else { fixed })
}
