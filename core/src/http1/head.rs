//! Parsed heads: one copy of the head bytes, header positions in a vector beside it
//! (no allocation per header). Both go into the vectors an earlier head gave back
//! where the connection keeps one ([`Head::new_in`], [`Head::into_room`]), so a head
//! is small to move (48 bytes) and costs no allocation on a warm connection.

use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

use super::framing::Framing;

/// Where one field's name and value lie in its head's bytes, and what the name is
/// to the codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) name: (u32, u32),
    pub(crate) value: (u32, u32),
    pub(crate) kind: Kind,
}

/// What a field's name is to the codec, read once when its head is made (framing,
/// the `Connection` tokens and what is passed on each read it, every field of every
/// message): the framing and connection fields, the other hop-by-hop ones, the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    #[default]
    Other,
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Expect,
    Upgrade,
    /// `keep-alive`, `proxy-connection`, `te`, `trailer`, `proxy-authorization`,
    /// `proxy-authenticate`.
    HopByHop,
}

impl Kind {
    /// The kind of `name` (any case): by length first, then one or two comparisons.
    pub(crate) fn of(name: &[u8]) -> Kind {
        let is = |known: &[u8]| crate::swar::eq_lower(name, known);
        match name.len() {
            2 if is(b"te") => Kind::HopByHop,
            4 if is(b"host") => Kind::Host,
            6 if is(b"expect") => Kind::Expect,
            7 if is(b"upgrade") => Kind::Upgrade,
            7 if is(b"trailer") => Kind::HopByHop,
            10 if is(b"connection") => Kind::Connection,
            10 if is(b"keep-alive") => Kind::HopByHop,
            14 if is(b"content-length") => Kind::ContentLength,
            16 if is(b"proxy-connection") => Kind::HopByHop,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            18 if is(b"proxy-authenticate") => Kind::HopByHop,
            19 if is(b"proxy-authorization") => Kind::HopByHop,
            _ => Kind::Other,
        }
    }
}

/// The header section of a message, as received (order and case kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    bytes: Vec<u8>,
    headers: Vec<Span>,
}

/// The largest head buffer kept for the next head ([`Head::into_room`]).
pub(crate) const ROOM_KEPT: usize = 4 * 1024;
/// The most field positions kept for the next head.
const SPANS_KEPT: usize = 64;

/// The span of `part` inside `base` (both from the same buffer).
pub(crate) fn offset(base: &[u8], part: &[u8]) -> (u32, u32) {
    // Both slices come from the same buffer: the difference of their addresses is the
    // offset. Head sizes are bounded far below u32::MAX by the limits.
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    (start as u32, (start + part.len()) as u32)
}

impl Head {
    /// The head parsed from `raw`, copied into `room`: an empty head an earlier one
    /// left ([`Head::into_room`]), so no allocation when its vectors are large
    /// enough, or a new one.
    pub(crate) fn new_in(room: Head, raw: &[u8], headers: &[httparse::Header<'_>]) -> Head {
        let Head { bytes: mut room, headers: mut spans } = room;
        spans.clear();
        spans.extend(headers.iter().map(|h| Span {
            name: offset(raw, h.name.as_bytes()),
            value: offset(raw, h.value),
            kind: Kind::of(h.name.as_bytes()),
        }));
        room.clear();
        room.extend_from_slice(raw);
        Head { bytes: room, headers: spans }
    }

    /// Reads the response head at the start of `raw` (which may go on past it) by our
    /// own parser ([`super::parse`]) into this head, whose vectors are reused (as
    /// [`Head::new_in`]); returns its status line and length. On an error the head is
    /// left holding no field, its room kept.
    pub(crate) fn parse_response(
        &mut self,
        raw: &[u8],
        max_headers: usize,
    ) -> Result<(super::parse::StatusLine, usize), super::parse::Fault> {
        self.headers.clear();
        let (line, len) = super::parse::response(raw, &mut self.headers, max_headers).inspect_err(|_| {
            self.headers.clear();
        })?;
        self.bytes.clear();
        self.bytes.extend_from_slice(raw.get(..len).unwrap_or_default());
        Ok((line, len))
    }

    /// Whether this head holds no room at all (neither vector has any capacity).
    pub(crate) fn is_room_empty(&self) -> bool {
        self.bytes.capacity() == 0 && self.headers.capacity() == 0
    }

    /// This head emptied, its vectors' room kept for the next head to be copied into
    /// ([`Head::new_in`]); a vector that grew past [`ROOM_KEPT`] bytes or
    /// [`SPANS_KEPT`] fields is not kept (a large head is rare: its room is not held
    /// for the next).
    pub(crate) fn into_room(mut self) -> Head {
        self.take_room()
    }

    /// [`Head::into_room`] in place: it is left empty.
    pub(crate) fn take_room(&mut self) -> Head {
        let Head { mut bytes, mut headers } = std::mem::take(self);
        if bytes.capacity() > ROOM_KEPT {
            bytes = Vec::new();
        }
        if headers.capacity() > SPANS_KEPT {
            headers = Vec::new();
        }
        bytes.clear();
        headers.clear();
        Head { bytes, headers }
    }

    /// An empty head holding `room` for the next one ([`Head::take_room`]).
    pub(crate) fn put_room(&mut self, room: Head) {
        *self = room.into_room();
    }

    pub(crate) fn range(&self, (start, end): (u32, u32)) -> &[u8] {
        self.bytes.get(start as usize..end as usize).unwrap_or_default()
    }

    pub(crate) fn str_range(&self, r: (u32, u32)) -> &str {
        std::str::from_utf8(self.range(r)).unwrap_or_default()
    }

    /// Every header, in order: name (as sent) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|s| (self.str_range(s.name), self.range(s.value)))
    }

    /// Every header, in order, as raw bytes (no UTF-8 check: names are tokens).
    pub fn iter_raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers.iter().map(|s| (self.range(s.name), self.range(s.value)))
    }

    /// Writes the fields `keep` chooses, in order, each as [`write_field`] writes it
    /// (`name: value` CRLF, the name lowercased). A run of chosen fields whose lines
    /// came in that form but for their names' case (one space after the colon, no
    /// padding, CRLF, each line right after the last) is copied in one piece and its
    /// names lowercased there: a usual backend head costs a copy per run of passed-on
    /// fields, not four copies per field.
    pub(crate) fn write_fields(&self, out: &mut Vec<u8>, mut keep: impl FnMut(Kind, &[u8]) -> bool) {
        // The run being gathered: its first field's index, and where its last line ends.
        let mut run: Option<(usize, u32)> = None;
        for (k, s) in self.headers.iter().enumerate() {
            let name = self.range(s.name);
            if !keep(s.kind, name) {
                if let Some((first, _)) = run.take() {
                    self.copy_run(first, k, out);
                }
                continue;
            }
            // The parser put the colon at the name's end and let no CR stand alone.
            let line_end = s.value.1.saturating_add(2);
            let as_written = s.value.0 == s.name.1.saturating_add(2)
                && self.bytes.get(s.name.1 as usize + 1) == Some(&b' ')
                && self.bytes.get(s.value.1 as usize) == Some(&b'\r');
            match run {
                Some((first, end)) if as_written && s.name.0 == end => run = Some((first, line_end)),
                _ => {
                    if let Some((first, _)) = run.take() {
                        self.copy_run(first, k, out);
                    }
                    if as_written {
                        run = Some((k, line_end));
                    } else {
                        write_field(name, self.range(s.value), out);
                    }
                }
            }
        }
        if let Some((first, _)) = run {
            self.copy_run(first, self.headers.len(), out);
        }
    }

    /// Copies the lines of fields `first..end` (one after another, each in the form
    /// [`write_field`] writes) and lowercases their names in the copy.
    fn copy_run(&self, first: usize, end: usize, out: &mut Vec<u8>) {
        let spans = self.headers.get(first..end).unwrap_or_default();
        let (Some(a), Some(z)) = (spans.first(), spans.last()) else {
            return;
        };
        let from = a.name.0;
        let at = out.len();
        out.extend_from_slice(self.range((from, z.value.1.saturating_add(2))));
        for s in spans {
            // The name's line goes on after it: a short one is lowercased in one step.
            let (start, len) = (s.name.0.wrapping_sub(from), s.name.1.wrapping_sub(s.name.0));
            if let Some(line) = out.get_mut(at + start as usize..) {
                crate::swar::make_lower_prefix(line, len as usize);
            }
        }
    }

    /// The values of the fields the codec reads (every kind but [`Kind::Other`]), in
    /// order, with their kinds; the others are passed over without a look at them.
    pub(crate) fn codec_fields(&self) -> impl Iterator<Item = (Kind, &[u8])> + '_ {
        self.headers.iter().filter(|s| s.kind != Kind::Other).map(|s| (s.kind, self.range(s.value)))
    }

    /// The first value of a header, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.headers.iter().find(|s| self.named(s, name)).map(|s| self.range(s.value))
    }

    /// Every value of a header, by case-insensitive name.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_bytes();
        self.headers.iter().filter(move |s| self.named(s, name)).map(|s| self.range(s.value))
    }

    /// Whether `span`'s name is `name` (any case): by the span's length first, so that
    /// the other fields cost neither a slice nor a comparison.
    fn named(&self, span: &Span, name: &[u8]) -> bool {
        span.name.1.wrapping_sub(span.name.0) as usize == name.len() && self.range(span.name).eq_ignore_ascii_case(name)
    }

    /// The `Host` field's value (a request with two is refused), found by its kind.
    pub(crate) fn host(&self) -> Option<&[u8]> {
        self.headers.iter().find(|s| s.kind == Kind::Host).map(|s| self.range(s.value))
    }

    /// A header section made of `fields` (for requests built in code: tests, benches).
    /// A name that is not a token or a value with CR, LF or NUL is left out, as the
    /// parser would have refused it.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Head {
        let mut bytes = Vec::new();
        let mut headers = Vec::new();
        for (name, value) in fields {
            let token = !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            if !token || value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
                continue;
            }
            let start = bytes.len() as u32;
            bytes.extend_from_slice(name.as_bytes());
            let name_end = bytes.len() as u32;
            bytes.extend_from_slice(b": ");
            let value_start = bytes.len() as u32;
            bytes.extend_from_slice(value);
            let kind = Kind::of(name.as_bytes());
            headers.push(Span { name: (start, name_end), value: (value_start, bytes.len() as u32), kind });
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        Head { bytes, headers }
    }

    pub fn len(&self) -> usize {
        self.headers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The headers as an [`http::HeaderMap`] (names lowercased, order kept), the values
    /// sharing this head's bytes rather than each copied out (one allocation, not one per
    /// field). A field that `http` cannot hold is left out; the parser already refused
    /// CR, LF and NUL.
    pub fn into_header_map(self) -> http::HeaderMap {
        let mut map = http::HeaderMap::with_capacity(self.headers.len());
        let bytes = bytes::Bytes::from(self.bytes);
        for span in &self.headers {
            let (Some(name), Some(_)) = (
                bytes.get(span.name.0 as usize..span.name.1 as usize),
                bytes.get(span.value.0 as usize..span.value.1 as usize),
            ) else {
                continue;
            };
            let value = bytes.slice(span.value.0 as usize..span.value.1 as usize);
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_maybe_shared(value)) {
                map.append(n, v);
            }
        }
        map
    }

    /// The raw bytes of the whole head, terminator included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A whole backend answer's header fields: as parsed (the head's spans over its bytes,
/// nothing converted: what an aggregated answer needs, which reads a field or two at
/// most) or as a map (one a plugin or a decoder built). Made a map only where a map is
/// wanted ([`HeaderFields::into_map`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFields {
    Head(Head),
    Map(http::HeaderMap),
}

impl Default for HeaderFields {
    fn default() -> HeaderFields {
        HeaderFields::Map(http::HeaderMap::new())
    }
}

impl From<Head> for HeaderFields {
    fn from(head: Head) -> HeaderFields {
        HeaderFields::Head(head)
    }
}

impl From<http::HeaderMap> for HeaderFields {
    fn from(map: http::HeaderMap) -> HeaderFields {
        HeaderFields::Map(map)
    }
}

impl HeaderFields {
    /// The first value of a field, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            HeaderFields::Head(head) => head.get(name),
            HeaderFields::Map(map) => map.get(name).map(http::HeaderValue::as_bytes),
        }
    }

    /// The fields as an [`http::HeaderMap`] (see [`Head::into_header_map`]).
    pub fn into_map(self) -> http::HeaderMap {
        match self {
            HeaderFields::Head(head) => head.into_header_map(),
            HeaderFields::Map(map) => map,
        }
    }
}

/// The hop-by-hop headers of one message: the fixed list plus those its `Connection`
/// names, read once per message.
#[derive(Debug)]
pub struct HopByHop<'h> {
    named: SmallVec<[&'h [u8]; 4]>,
}

impl<'h> HopByHop<'h> {
    pub fn of(head: &'h Head) -> HopByHop<'h> {
        let mut named = SmallVec::new();
        for span in &head.headers {
            if span.kind != Kind::Connection {
                continue;
            }
            // The fixed list answers for itself (`keep-alive`, the usual one, among them:
            // alone, it is not split).
            let value = head.range(span.value);
            if crate::swar::eq_lower(value, b"keep-alive") {
                continue;
            }
            let tokens = value.split(|&b| b == b',').map(super::framing::trim);
            named.extend(tokens.filter(|t| !t.is_empty() && !super::is_hop_by_hop_name(t)));
        }
        HopByHop { named }
    }

    /// Whether `name` (any case) is hop-by-hop in this message.
    pub fn contains(&self, name: &[u8]) -> bool {
        super::is_hop_by_hop_name(name) || self.names(name)
    }

    /// Whether this message's `Connection` names `name` (any case), one of the fixed
    /// list aside.
    pub(crate) fn names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Writes `name: value` with the name lowercased. Names and values come from a parsed
/// head (tokens; no CR, LF or NUL) or from the gateway itself.
pub(crate) fn write_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    write_lower_field(name, value, out);
    // Lowercased in place eight bytes a step (a byte-by-byte extend checked the room
    // at every byte), with the rest of the line after it, so that a short name is one
    // step too.
    if let Some(line) = out.get_mut(start..) {
        crate::swar::make_lower_prefix(line, name.len());
    }
}

/// Writes `name: value` as [`write_field`] does, for a name already lowercase: a
/// literal of the gateway's own, or an `http::HeaderName` (lowercase by its type).
pub(crate) fn write_lower_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The form of a request target (RFC 9112 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://host/path` (to a forward proxy)
    Absolute,
    /// `host:port` (CONNECT)
    Authority,
    /// `*` (OPTIONS)
    Asterisk,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub version: Version,
    pub form: TargetForm,
    pub(crate) target: (u32, u32),
    pub head: Head,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client wants the connection kept open (version and `Connection`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
    /// `Upgrade` with `Connection: upgrade`: a protocol switch if answered 101.
    pub upgrade: bool,
}

impl Request {
    /// The request target as sent.
    pub fn target(&self) -> &str {
        self.head.str_range(self.target)
    }

    /// The path of an origin-form target (no query); the whole target otherwise.
    pub fn path(&self) -> &str {
        let t = self.target();
        match self.form {
            TargetForm::Origin => t.split_once('?').map_or(t, |(p, _)| p),
            _ => t,
        }
    }

    /// The query of an origin-form target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        match self.form {
            TargetForm::Origin => self.target().split_once('?').map(|(_, q)| q),
            _ => None,
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub(crate) reason: (u32, u32),
    pub head: Head,
    pub framing: Framing,
    /// Whether the backend keeps the connection open after this response.
    pub keep_alive: bool,
}

impl Response {
    /// The reason phrase as sent.
    pub fn reason(&self) -> &str {
        self.head.str_range(self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::{Head, HeaderFields, HopByHop, Kind, ROOM_KEPT, SPANS_KEPT};

    #[test]
    fn the_fields_a_connection_names_are_hop_by_hop_and_the_fixed_list_always() {
        for (connection, named) in [
            ("keep-alive", &[][..]),
            ("Keep-Alive", &[]),
            (" keep-alive ", &[]),
            ("close", &["close"]),
            ("keep-alive, X-Secret", &["x-secret"]),
            ("x-a,,  X-B , keep-alive,te", &["x-a", "x-b"]),
            ("keep-alivex", &["keep-alivex"]),
        ] {
            let head = Head::from_fields([("Connection", connection.as_bytes()), ("X-Other", b"1")]);
            let hop = HopByHop::of(&head);
            for name in ["keep-alive", "TE", "Transfer-Encoding", "proxy-authorization", "connection"] {
                assert!(hop.contains(name.as_bytes()), "{connection:?}: {name}");
            }
            for name in ["x-other", "x-secret", "x-a", "x-b", "close", "keep-alivex"] {
                let expected = named.contains(&name);
                assert_eq!(hop.contains(name.as_bytes()), expected, "{connection:?}: {name}");
                assert_eq!(hop.contains(name.to_uppercase().as_bytes()), expected, "{connection:?}: {name}");
            }
        }
    }

    #[test]
    fn a_field_is_found_by_its_whole_name_in_any_case() {
        let head = Head::from_fields([
            ("Hosts", &b"1"[..]),
            ("HOSX", b"2"),
            ("Accept", b"a/b"),
            ("X-Tag", b"one"),
            ("hOsT", b"h:1"),
            ("x-tag", b"two"),
            ("X-Tags", b"three"),
        ]);
        assert_eq!(head.get("host"), Some(&b"h:1"[..]));
        assert_eq!(head.host(), Some(&b"h:1"[..]));
        assert_eq!(head.get("ACCEPT"), Some(&b"a/b"[..]));
        assert_eq!(head.get("x-tag"), Some(&b"one"[..]), "the first of two");
        assert_eq!(head.get_all("X-TAG").collect::<Vec<_>>(), [&b"one"[..], b"two"]);
        assert_eq!(head.get("hos"), None);
        assert_eq!(head.get(""), None);
        assert_eq!(Head::from_fields([("Hosts", &b"1"[..])]).host(), None);
    }

    #[test]
    fn a_name_s_kind_is_read_in_any_case_and_the_hop_by_hop_ones_are_the_fixed_list() {
        let kinds = [
            ("content-length", Kind::ContentLength),
            ("Transfer-Encoding", Kind::TransferEncoding),
            ("CONNECTION", Kind::Connection),
            ("Host", Kind::Host),
            ("expect", Kind::Expect),
            ("Upgrade", Kind::Upgrade),
            ("Keep-Alive", Kind::HopByHop),
            ("TE", Kind::HopByHop),
            ("trailer", Kind::HopByHop),
            ("Proxy-Connection", Kind::HopByHop),
            ("proxy-authorization", Kind::HopByHop),
            ("Proxy-Authenticate", Kind::HopByHop),
            ("content-lengths", Kind::Other),
            ("connectio", Kind::Other),
            ("hosts", Kind::Other),
            ("x-te", Kind::Other),
            ("tf", Kind::Other),
            ("trailers", Kind::Other),
            // A known name's length, another first letter or the same one.
            ("Date", Kind::Other),
            ("xost", Kind::Other),
            ("Server", Kind::Other),
            ("User-Agent", Kind::Other),
            ("Xonnection", Kind::Other),
            ("hoSt", Kind::Host),
            ("", Kind::Other),
        ];
        for (name, kind) in kinds {
            assert_eq!(Kind::of(name.as_bytes()), kind, "{name}");
            let hop = matches!(kind, Kind::Connection | Kind::TransferEncoding | Kind::Upgrade | Kind::HopByHop);
            assert_eq!(super::super::is_hop_by_hop_name(name.as_bytes()), hop, "{name}");
        }
        for name in super::super::HOP_BY_HOP {
            assert_ne!(Kind::of(name.to_ascii_uppercase().as_bytes()), Kind::Other, "{name}");
        }
    }

    fn parsed(raw: &[u8], room: Head) -> Head {
        let mut fields = [httparse::EMPTY_HEADER; 80];
        let mut resp = httparse::Response::new(&mut fields);
        assert!(resp.parse(raw).is_ok_and(|s| s.is_complete()));
        Head::new_in(room, raw, resp.headers)
    }

    #[test]
    fn a_head_copied_into_a_given_back_room_reads_as_a_new_one() {
        let first =
            parsed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n", Head::default());
        let room = first.into_room();
        let at = |h: &Head| (h.bytes.as_ptr(), h.bytes.capacity(), h.headers.as_ptr(), h.headers.capacity());
        let kept = at(&room);
        assert!(room.is_empty() && room.bytes.is_empty() && kept.1 >= 64 && kept.3 >= 2);
        let second = parsed(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\n\r\n", room);
        assert_eq!(second.iter().collect::<Vec<_>>(), [("X-A", &b"1"[..])]);
        assert_eq!(second.get("content-type"), None);
        // The same vectors, not new ones.
        let room = second.into_room();
        assert_eq!(at(&room), kept);
        // A head past the kept size gives no buffer back: it is not held for the next.
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "b".repeat(ROOM_KEPT));
        let big = parsed(big.as_bytes(), room);
        assert_eq!(big.get("x-big").map(<[u8]>::len), Some(ROOM_KEPT));
        let room = big.into_room();
        assert_eq!((room.bytes.capacity(), room.headers.as_ptr()), (0, kept.2));
        // Nor one with more fields than are kept.
        let many: String = (0..SPANS_KEPT + 1).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let many = parsed(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes(), room);
        assert_eq!(many.len(), SPANS_KEPT + 1);
        assert_eq!(many.get("x-64"), Some(&b"64"[..]));
        let room = many.into_room();
        assert_eq!(room.headers.capacity(), 0);
        assert!(room.bytes.capacity() > 0);
    }

    #[test]
    fn names_are_written_lowercased_whatever_their_length() {
        // Every printable byte (and two over 0x7F), at every place in names of every
        // length up to 20.
        let all: Vec<u8> = (0x21u8..0x7f).chain([0xC3, 0x89]).collect();
        for start in 0..all.len() {
            for len in 0..=20.min(all.len() - start) {
                let name = &all[start..start + len];
                let mut out = b"x".to_vec();
                super::write_field(name, b"V a", &mut out);
                let mut expected = b"x".to_vec();
                expected.extend(name.iter().map(u8::to_ascii_lowercase));
                expected.extend_from_slice(b": V a\r\n");
                assert_eq!(out, expected, "{:?}", String::from_utf8_lossy(name));
            }
        }
    }

    #[test]
    fn chosen_fields_are_written_as_one_by_one_whatever_their_lines_look_like() {
        // Lines in the written form (copied a run at a time) among ones that are not
        // (written a field at a time): no space or two after the colon, padding, a tab,
        // a bare LF, an empty value, capitals anywhere.
        let lines = [
            "Server: nginx/1.22.1\r\n",
            "Date: Thu, 03 Dec 2026 11:00:00 GMT\r\n",
            "X-Empty: \r\n",
            "X-Bare:\r\n",
            "X-Pad:  two  words \r\n",
            "X-Tab:\tv\r\n",
            "X-Lf: bare\n",
            "CONTENT-type: A B\r\n",
            "etag: \"5f-64\"\r\n",
            "X-Trail: t\t\r\n",
        ];
        for turn in 0..lines.len() {
            let mut order = lines.to_vec();
            order.rotate_left(turn);
            let raw = format!("HTTP/1.1 200 OK\r\n{}\r\n", order.concat());
            let mut ours = Head::default();
            assert!(ours.parse_response(raw.as_bytes(), 64).is_ok(), "{raw}");
            // And a head made from fields (a plugin's or the gateway's own), padding
            // in its values as given.
            let made = Head::from_fields(order.iter().map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name, value.trim_end_matches(['\r', '\n']).as_bytes())
            }));
            for head in [ours, parsed(raw.as_bytes(), Head::default()), made] {
                assert_eq!(head.len(), lines.len());
                for mask in 0u32..1 << lines.len() {
                    let chosen = |k: usize| mask & (1 << k) != 0;
                    let mut expected = b"HTTP".to_vec();
                    for (k, (name, value)) in head.iter_raw().enumerate() {
                        if chosen(k) {
                            super::write_field(name, value, &mut expected);
                        }
                    }
                    let mut out = b"HTTP".to_vec();
                    let mut k = 0;
                    head.write_fields(&mut out, |_, _| {
                        k += 1;
                        chosen(k - 1)
                    });
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&expected),
                        "{raw:?} chosen {mask:#b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_header_map_keeps_every_field_in_order_with_its_value() {
        let head = Head::from_fields([
            ("Content-Type", &b"application/json"[..]),
            ("Set-Cookie", b"a=1"),
            ("X-Custom", b"v \x80 w"),
            ("set-cookie", b"b=2"),
            ("ETag", b"\"6751f0c0-64\""),
        ]);
        let map = head.into_header_map();
        assert_eq!(map.len(), 5);
        assert_eq!(map.keys_len(), 4);
        assert_eq!(map["content-type"], "application/json");
        let cookies: Vec<&[u8]> = map.get_all("set-cookie").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(map["x-custom"].as_bytes(), b"v \x80 w");
        assert_eq!(map["etag"], "\"6751f0c0-64\"");
        assert!(Head::from_fields([]).into_header_map().is_empty());
    }

    #[test]
    fn header_fields_read_the_same_as_parsed_and_as_a_map() {
        let head = || Head::from_fields([("Content-Type", &b"text/xml"[..]), ("Location", b"/b"), ("location", b"/c")]);
        for fields in [HeaderFields::from(head()), HeaderFields::from(head().into_header_map())] {
            assert_eq!(fields.get("content-type"), Some(&b"text/xml"[..]));
            assert_eq!(fields.get("LOCATION"), Some(&b"/b"[..]), "the first of two");
            assert_eq!(fields.get("etag"), None);
            let map = fields.into_map();
            assert_eq!(map.len(), 3);
            assert_eq!(map.get_all("location").iter().count(), 2);
        }
        assert_eq!(HeaderFields::default().get("content-type"), None);
    }
}
