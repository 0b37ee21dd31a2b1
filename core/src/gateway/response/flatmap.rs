//! `proxy.flatmap_filter`: moving, deleting and appending values deep in an answer,
//! arrays included, as KrakenD's flatmap (the `tree` package lura runs) does it.
//!
//! Paths are dotted; a step is an object key, an array index, or `*` for every member
//! or item at that level. The rules, each checked against flatmap 1.2.0 itself:
//! - `del` removes what each path names; a missing path changes nothing.
//! - `move(from, to)`: with paths of one length, the last key is renamed in place (the
//!   rest of `to` is not read); with `from` longer, the value leaves its parent and is
//!   put under `to` less its last step, walked from the top as far as it exists (a `*`
//!   there takes the index `from` matched at that step); with `from` shorter, it stays
//!   under its parent, below the steps of `to` past `from`'s parent, made as needed.
//!   A moved value replaces a key of its name. `*` may not end a path (refused when the
//!   configuration is read: flatmap matches nothing there).
//! - `append(from, to)`: `to` must be an array, and `from` an array or a path with `*`
//!   (the values it matches); `to` becomes `to`'s items then `from`'s, and `from` is
//!   deleted. Anything else changes nothing.
//! - An object or array that loses its last member becomes `null` (one that came empty
//!   stays `{}` or `[]`); array items keep the index they came with, so after deleting
//!   `a.1`, `a.2` still names the third item.
//!
//! Deliberate differences: where a move gives a node two members of one name, flatmap
//! keeps both and which one is written depends on Go's map order; here the moved one
//! replaces the other. An answer left with no member at all is `{}` here (KrakenD
//! writes `null`). Values that are not opened are written byte for byte.

use std::borrow::Cow;

use crate::config::FlatmapOp;
use crate::gateway::json;
use crate::gateway::response::{Entry, Key, Node};

/// A value under the operations: opened where a path went into it.
#[derive(Debug, Clone)]
enum Val<'a> {
    /// A scalar, an empty container, or a container not opened yet.
    Leaf(Node<'a>),
    /// An object opened; written `null` once it has no member left.
    Obj(Vec<(Cow<'a, str>, Val<'a>)>),
    /// An array opened, each item with the index it came with.
    Arr(Vec<(usize, Val<'a>)>),
}

impl<'a> Val<'a> {
    /// Opens a leaf that holds a non-empty object or array; whether it is one now.
    fn open(&mut self) -> bool {
        let Val::Leaf(node) = self else { return true };
        let opened = match node {
            Node::Raw(raw) => match json::kind(raw) {
                json::Kind::Object => {
                    let members = json::members(raw);
                    if members.is_empty() {
                        return false;
                    }
                    Val::Obj(members.into_iter().map(|(k, v)| (json::unescape(k), Val::Leaf(Node::Raw(v)))).collect())
                }
                json::Kind::Array => {
                    let items = json::items(raw);
                    if items.is_empty() {
                        return false;
                    }
                    Val::Arr(items.into_iter().map(|v| Val::Leaf(Node::Raw(v))).enumerate().collect())
                }
                _ => return false,
            },
            Node::Obj(entries) if !entries.is_empty() => {
                Val::Obj(std::mem::take(entries).into_iter().map(|(k, v)| (label(&k), Val::Leaf(v))).collect())
            }
            Node::Arr(items) if !items.is_empty() => {
                Val::Arr(std::mem::take(items).into_iter().map(Val::Leaf).enumerate().collect())
            }
            _ => return false,
        };
        *self = opened;
        true
    }

    /// The labels of its members or items (opening it).
    fn labels(&mut self) -> Vec<String> {
        if !self.open() {
            return Vec::new();
        }
        match self {
            Val::Obj(m) => m.iter().map(|(k, _)| k.to_string()).collect(),
            Val::Arr(items) => items.iter().map(|(i, _)| i.to_string()).collect(),
            Val::Leaf(_) => Vec::new(),
        }
    }

    fn child(&mut self, step: &str) -> Option<&mut Val<'a>> {
        if !self.open() {
            return None;
        }
        match self {
            Val::Obj(m) => m.iter_mut().find(|(k, _)| k == step).map(|(_, v)| v),
            Val::Arr(items) => {
                // Items stay sorted by the index they came with.
                let i: usize = step.parse().ok()?;
                let at = items.binary_search_by_key(&i, |(j, _)| *j).ok()?;
                items.get_mut(at).map(|(_, v)| v)
            }
            Val::Leaf(_) => None,
        }
    }

    fn remove(&mut self, step: &str) -> Option<Val<'a>> {
        match self {
            Val::Obj(m) => {
                let at = m.iter().position(|(k, _)| k == step)?;
                Some(m.remove(at).1)
            }
            Val::Arr(items) => {
                let i: usize = step.parse().ok()?;
                let at = items.binary_search_by_key(&i, |(j, _)| *j).ok()?;
                Some(items.remove(at).1)
            }
            Val::Leaf(_) => None,
        }
    }

    /// Puts `value` under `name` (replacing a member of that name). An array takes it
    /// only under an index.
    fn put(&mut self, name: &str, value: Val<'a>) {
        if self.is_empty_object() {
            *self = Val::Obj(Vec::new());
        } else {
            self.open();
        }
        match self {
            Val::Obj(m) => match m.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = value,
                None => m.push((Cow::Owned(name.to_string()), value)),
            },
            Val::Arr(items) => {
                if let Ok(i) = name.parse::<usize>() {
                    match items.binary_search_by_key(&i, |(j, _)| *j) {
                        Ok(at) => items[at].1 = value,
                        Err(at) => items.insert(at, (i, value)),
                    }
                }
            }
            Val::Leaf(_) => {}
        }
    }

    /// Whether it is a leaf holding `{}` (which a move may put a member in).
    fn is_empty_object(&self) -> bool {
        match self {
            Val::Leaf(Node::Raw(raw)) => json::kind(raw) == json::Kind::Object && json::members(raw).is_empty(),
            Val::Leaf(Node::Obj(m)) => m.is_empty(),
            _ => false,
        }
    }

    /// Whether a member can be put in it.
    fn holds(&mut self) -> bool {
        self.open() || self.is_empty_object()
    }

    fn into_node(self) -> Node<'a> {
        match self {
            Val::Leaf(n) => n,
            Val::Obj(m) if m.is_empty() => Node::Raw("null"),
            Val::Arr(items) if items.is_empty() => Node::Raw("null"),
            Val::Obj(m) => Node::Obj(m.into_iter().map(|(k, v)| (Key::Text(k), v.into_node())).collect()),
            Val::Arr(items) => Node::Arr(items.into_iter().map(|(_, v)| v.into_node()).collect()),
        }
    }

    /// Whether it is an array (opening it).
    fn is_array(&mut self) -> bool {
        match self {
            Val::Leaf(Node::Raw(raw)) if json::kind(raw) == json::Kind::Array => {
                self.open();
                true
            }
            Val::Leaf(Node::Arr(_)) | Val::Arr(_) => {
                self.open();
                true
            }
            _ => false,
        }
    }

    /// Its items, in order (for an array: `is_array` first).
    fn items(self) -> Vec<Val<'a>> {
        match self {
            Val::Arr(items) => items.into_iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        }
    }
}

fn label<'a>(k: &Key<'a>) -> Cow<'a, str> {
    match k {
        Key::Raw(raw) => json::unescape(raw),
        Key::Text(t) => t.clone(),
    }
}

/// Every concrete path `path` matches under `root` (each `*` replaced by a label).
fn expand(root: &mut Val<'_>, path: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut walk = vec![(Vec::new(), 0usize)];
    while let Some((at, depth)) = walk.pop() {
        if depth == path.len() {
            found.push(at);
            continue;
        }
        let Some(node) = resolve(root, &at) else { continue };
        let step = &path[depth];
        let labels = if step == "*" {
            node.labels()
        } else if node.child(step).is_some() {
            vec![step.clone()]
        } else {
            Vec::new()
        };
        // Pushed in reverse so that matches come out in document order.
        for l in labels.into_iter().rev() {
            let mut next = at.clone();
            next.push(l);
            walk.push((next, depth + 1));
        }
    }
    found
}

fn resolve<'v, 'a>(root: &'v mut Val<'a>, path: &[String]) -> Option<&'v mut Val<'a>> {
    let mut node = root;
    for step in path {
        node = node.child(step)?;
    }
    Some(node)
}

fn take<'a>(root: &mut Val<'a>, path: &[String]) -> Option<Val<'a>> {
    let (last, parent) = path.split_last()?;
    resolve(root, parent)?.remove(last)
}

fn del(root: &mut Val<'_>, path: &[String]) {
    // `...*`: every member of each container matched, at once (one by one would move
    // the rest of a long array for each item).
    if let Some((last, parent)) = path.split_last()
        && last == "*"
    {
        for at in expand(root, parent) {
            if let Some(node) = resolve(root, &at)
                && node.open()
            {
                match node {
                    Val::Obj(m) => m.clear(),
                    Val::Arr(items) => items.clear(),
                    Val::Leaf(_) => {}
                }
            }
        }
        return;
    }
    // Last first, so that removing one does not move another.
    for at in expand(root, path).into_iter().rev() {
        take(root, &at);
    }
}

fn move_value(root: &mut Val<'_>, from: &[String], to: &[String]) {
    let Some(name) = to.last() else { return };
    for at in expand(root, from) {
        let Some((last, parent)) = at.split_last() else { continue };
        if from.len() == to.len() {
            // An array item keeps to indexes (a name there would lose it).
            if name != last
                && let Some(p) = resolve(root, parent)
                && (matches!(p, Val::Obj(_)) || name.parse::<usize>().is_ok())
                && let Some(v) = p.remove(last)
            {
                p.put(name, v);
            }
            continue;
        }
        let Some(value) = take(root, &at) else { continue };
        let mut dest: Vec<String> = Vec::with_capacity(to.len());
        let mut stopped = false;
        if from.len() > to.len() {
            // Up: under `to` less its last step, from the top, as far as it exists.
            for (i, step) in to[..to.len() - 1].iter().enumerate() {
                dest.push(if step == "*" { at.get(i).unwrap_or(step).clone() } else { step.clone() });
                if resolve(root, &dest).is_none() {
                    dest.pop();
                    break;
                }
            }
        } else {
            // Down: below the parent, along the steps of `to` past the parent's depth,
            // made as needed.
            dest.extend_from_slice(parent);
            for step in &to[parent.len()..to.len() - 1] {
                let Some(node) = resolve(root, &dest) else { break };
                if node.child(step).is_none() {
                    if !node.holds() || matches!(node, Val::Arr(_)) {
                        stopped = true;
                        break;
                    }
                    node.put(step, Val::Obj(Vec::new()));
                }
                dest.push(step.clone());
            }
        }
        // There, or back where it was when it cannot go there (a scalar on the way).
        let fits = !stopped
            && resolve(root, &dest)
                .is_some_and(|n| n.holds() && (!matches!(n, Val::Arr(_)) || name.parse::<usize>().is_ok()));
        let (into, key) = if fits { (dest.as_slice(), name) } else { (parent, last) };
        if let Some(node) = resolve(root, into) {
            node.put(key, value);
        }
    }
}

fn append(root: &mut Val<'_>, from: &[String], to: &[String]) {
    let wild = from.iter().any(|s| s == "*");
    let matches = expand(root, from);
    let mut values = Vec::new();
    if wild {
        for at in &matches {
            if let Some(v) = resolve(root, at) {
                values.push(v.clone());
            }
        }
    } else {
        let Some(v) = matches.first().and_then(|at| resolve(root, at)) else { return };
        if !v.is_array() {
            return;
        }
        values = v.clone().items();
    }
    let Some(dst) = resolve(root, to) else { return };
    if !dst.is_array() {
        return;
    }
    let Val::Arr(items) = dst else { return };
    let next = items.last().map_or(0, |(i, _)| i + 1);
    items.extend(values.into_iter().enumerate().map(|(k, v)| (next + k, v)));
    del(root, from);
}

/// Runs `ops` over an answer's members; `None` when nothing is left (KrakenD's nil
/// data).
pub fn apply<'a>(ops: &[FlatmapOp], entries: Vec<Entry<'a>>) -> Option<Vec<Entry<'a>>> {
    if ops.is_empty() {
        return Some(entries);
    }
    let mut root = Val::Obj(entries.into_iter().map(|(k, v)| (label(&k), Val::Leaf(v))).collect());
    for op in ops {
        match op {
            FlatmapOp::Del(paths) => paths.iter().for_each(|p| del(&mut root, p)),
            FlatmapOp::Move(from, to) => move_value(&mut root, from, to),
            FlatmapOp::Append(from, to) => append(&mut root, from, to),
        }
    }
    match root {
        Val::Obj(m) if m.is_empty() => None,
        Val::Obj(m) => Some(m.into_iter().map(|(k, v)| (Key::Text(k), v.into_node())).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::response::write_object;

    fn op(kind: &str, args: &[&str]) -> FlatmapOp {
        let p = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        match kind {
            "move" => FlatmapOp::Move(p(args[0]), p(args[1])),
            "append" => FlatmapOp::Append(p(args[0]), p(args[1])),
            _ => FlatmapOp::Del(args.iter().map(|a| p(a)).collect()),
        }
    }

    fn run(input: &str, ops: &[FlatmapOp]) -> String {
        let members = json::parse_object(input).unwrap();
        let entries = members.into_iter().map(|(k, v)| (Key::Raw(k), Node::Raw(v))).collect();
        match apply(ops, entries) {
            None => "null".into(),
            Some(e) => {
                let mut out = Vec::new();
                write_object(&e, &mut out);
                String::from_utf8(out).unwrap()
            }
        }
    }

    /// Each case as flatmap 1.2.0 answered it (Go, lura's `processOps`); Go writes keys
    /// sorted, so the inputs are written so that ours come out in the same order.
    #[test]
    fn as_flatmap_answers() {
        let cases: &[(&str, &[FlatmapOp], &str)] = &[
            (r#"{"a":{"b":1},"e":{},"f":[]}"#, &[op("del", &["a.b"])], r#"{"a":null,"e":{},"f":[]}"#),
            (r#"{"a":[1,2]}"#, &[op("del", &["a.*"])], r#"{"a":null}"#),
            (r#"{"a":{"x":1,"y":2}}"#, &[op("del", &["a.*"])], r#"{"a":null}"#),
            (r#"{"a":[1,2,3]}"#, &[op("del", &["a.1"])], r#"{"a":[1,3]}"#),
            (r#"{"a":[{"b":1,"c":2},{"b":3}]}"#, &[op("del", &["a.*.b"])], r#"{"a":[{"c":2},null]}"#),
            (r#"{"a":{"b":1},"c":2}"#, &[op("move", &["a.b", "c"])], r#"{"a":null,"c":1}"#),
            (r#"{"a":{"b":1}}"#, &[op("move", &["a.b", "x.y"])], r#"{"a":{"y":1}}"#),
            (r#"{"a":{"b":1},"c":2}"#, &[op("move", &["c", "a.d"])], r#"{"a":{"b":1,"d":2}}"#),
            (r#"{"a":{"b":{"c":1}}}"#, &[op("move", &["a.b.c", "x.y"])], r#"{"a":{"b":null},"y":1}"#),
            (r#"{"a":[{"b":1},{"b":2}]}"#, &[op("move", &["a.*.b", "a.*.c"])], r#"{"a":[{"c":1},{"c":2}]}"#),
            (
                r#"{"collection":[{"path":"/p","i":1},{"path":"/p","i":2}]}"#,
                &[
                    op("move", &["collection", "paths"]),
                    op("del", &["paths.*.i"]),
                    op("move", &["paths.*.path", "paths.*.url"]),
                ],
                r#"{"paths":[{"url":"/p"},{"url":"/p"}]}"#,
            ),
            (r#"{"a":[1,2]}"#, &[op("move", &["a.0", "first"])], r#"{"a":[2],"first":1}"#),
            (r#"{"a":[1,2],"b":[3]}"#, &[op("append", &["a", "b"])], r#"{"b":[3,1,2]}"#),
            (
                r#"{"a":[{"k":1},{"k":2}],"b":[0]}"#,
                &[op("append", &["a.*.k", "b"])],
                r#"{"a":[null,null],"b":[0,1,2]}"#,
            ),
            (r#"{"a":[1,2]}"#, &[op("append", &["a", "b"])], r#"{"a":[1,2]}"#),
            (r#"{"a":1,"b":[3]}"#, &[op("append", &["a", "b"])], r#"{"a":1,"b":[3]}"#),
            (r#"{"a":[],"b":1}"#, &[op("del", &["b"])], r#"{"a":[]}"#),
            (r#"{"a":{"0":1,"1":2}}"#, &[op("del", &["a.0"])], r#"{"a":{"1":2}}"#),
            (r#"{"a":[[1,2],[3]]}"#, &[op("del", &["a.*.0"])], r#"{"a":[[2],null]}"#),
            (r#"{"a":null,"b":1}"#, &[op("del", &["b"])], r#"{"a":null}"#),
            (r#"{"a":{"b":1}}"#, &[op("del", &["a.b"]), op("del", &["a"])], "null"),
            (
                r#"{"big":12345678901234567890,"n":1.50,"s":"x"}"#,
                &[op("del", &["s"])],
                r#"{"big":12345678901234567890,"n":1.50}"#,
            ),
            (r#"{"a":{"b":{"c":1,"d":2}}}"#, &[op("move", &["a.b", "z"])], r#"{"a":null,"z":{"c":1,"d":2}}"#),
            (
                r#"{"a":[{"b":{"c":1}},{"b":{"c":2}}]}"#,
                &[op("move", &["a.*.b.c", "a.*.d"])],
                r#"{"a":[{"b":null,"d":1},{"b":null,"d":2}]}"#,
            ),
            (r#"{"a":{"b":1}}"#, &[op("move", &["a", "a"])], r#"{"a":{"b":1}}"#),
            (
                r#"{"x":{"y":[{"id":1},{"id":2}]}}"#,
                &[op("move", &["x.y", "items"])],
                r#"{"x":null,"items":[{"id":1},{"id":2}]}"#,
            ),
            (r#"{"a":[1,2]}"#, &[op("del", &["a.5", "a.x"])], r#"{"a":[1,2]}"#),
            (r#"{"a":{"b":1},"c":{"d":2}}"#, &[op("move", &["a.b", "c.d"])], r#"{"a":{"d":1},"c":{"d":2}}"#),
            (r#"{"a":[{"b":1}]}"#, &[op("move", &["a.0.b", "a.0.c"])], r#"{"a":[{"c":1}]}"#),
            (r#"{"a":[1,2,3]}"#, &[op("del", &["a.1"]), op("del", &["a.2"])], r#"{"a":[1]}"#),
            (r#"{"a":[1,2,3]}"#, &[op("del", &["a.0"]), op("move", &["a.1", "x"])], r#"{"a":[3],"x":2}"#),
            (r#"{"a":1}"#, &[op("move", &["a", "x.y.z"])], r#"{"x":{"y":{"z":1}}}"#),
            (
                r#"{"a":[{"b":1},{"b":2}]}"#,
                &[op("move", &["a.*.b", "a.*.c.d"])],
                r#"{"a":[{"c":{"d":1}},{"c":{"d":2}}]}"#,
            ),
            (r#"{"a":[{"k":1}],"b":[{"j":2}]}"#, &[op("append", &["a", "b"])], r#"{"b":[{"j":2},{"k":1}]}"#),
            (r#"{"e":{}}"#, &[op("del", &["e.x"])], r#"{"e":{}}"#),
            (r#"{"e":{},"f":[]}"#, &[op("del", &["e.*", "f.*"])], r#"{"e":{},"f":[]}"#),
            (r#"{"a":[[1,2],[3]]}"#, &[op("del", &["a.*.*"])], r#"{"a":[null,null]}"#),
            (r#"{"a":[1,2,3]}"#, &[op("del", &["a.1"]), op("move", &["a.2", "a.7"])], r#"{"a":[1,3]}"#),
            (r#"{"e":{},"c":1}"#, &[op("move", &["c", "e.d"])], r#"{"e":{"d":1}}"#),
            (r#"{"e":2,"c":1}"#, &[op("move", &["c", "e.d"])], r#"{"e":2,"c":1}"#),
            (r#"{"a":[1,2]}"#, &[op("move", &["a.0", "b.first"])], r#"{"a":[1,2]}"#),
            (r#"{"a":{"b":1},"x":3}"#, &[op("move", &["a.b", "x.y"])], r#"{"a":{"y":1},"x":3}"#),
            (r#"{"a":{"b":{"c":1}},"x":3}"#, &[op("move", &["a.b.c", "x.y"])], r#"{"a":{"b":{"c":1}},"x":3}"#),
        ];
        for (input, ops, want) in cases {
            assert_eq!(run(input, ops), *want, "{input} {ops:?}");
        }
    }

    /// Wide answers stay linear: every item of a 200,000-item array is reached by a
    /// search, never by a scan, and `*` at the end clears at once.
    #[test]
    fn wide_arrays_are_not_quadratic() {
        let items: Vec<String> = (0..200_000).map(|i| format!(r#"{{"b":{i},"c":1}}"#)).collect();
        let input = format!(r#"{{"a":[{}]}}"#, items.join(","));
        let out = run(&input, &[op("del", &["a.*.b"]), op("move", &["a.*.c", "a.*.d"]), op("del", &["a.*"])]);
        assert_eq!(out, r#"{"a":null}"#);
    }
}
