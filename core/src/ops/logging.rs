//! `telemetry/logging`, as KrakenD's logging component reads it: the level, the prefix,
//! where lines go (`stdout`, `syslog` with its `syslog_facility`) and their `format`:
//! `default` (`PREFIX 2006/01/02 - 15:04:05.000 ▶ LEVEL message`), `logstash` (one JSON
//! object per line: `@timestamp`, `@version`, `level`, `message`, `module`) or `custom`
//! (a `custom_format` pattern of go-logging verbs: `%{message}`, `%{level}`,
//! `%{time:LAYOUT}` with a Go time layout, ...).
//!
//! This module reads the configuration and renders lines; it does no I/O and reads no
//! clock (the binary's log sink writes what it renders, with the time it read).

use std::fmt::Write as _;

/// KrakenD's levels, most verbose first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    /// The configuration's word for it, in any case, as go-logging reads it (its
    /// `NOTICE`, between info and warning, counts as `INFO`: Sluice has no such level).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_uppercase().as_str() {
            "DEBUG" => Level::Debug,
            "INFO" | "NOTICE" => Level::Info,
            "WARNING" => Level::Warning,
            "ERROR" => Level::Error,
            "CRITICAL" => Level::Critical,
            _ => return None,
        })
    }

    /// As go-logging writes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// The syslog severity of a line of this level (RFC 5424).
    pub fn severity(self) -> u8 {
        match self {
            Level::Debug => 7,
            Level::Info => 6,
            Level::Warning => 4,
            Level::Error => 3,
            Level::Critical => 2,
        }
    }
}

/// The syslog facilities a `syslog_facility` may name, with their codes.
pub const FACILITIES: [(&str, u8); 20] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// How application and access lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `PREFIX 2006/01/02 - 15:04:05.000 ▶ LEVEL message`.
    Default,
    /// `{"@timestamp":"...", "@version": 1, "level": "...", "message": "...", "module": "KRAKEND"}`.
    Logstash,
    /// `custom_format`.
    Custom(Pattern),
}

/// `extra_config."telemetry/logging"`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// Lines below it are not written.
    pub level: Level,
    /// Before each `default` line (KrakenD drops it for `logstash` and `custom`); the
    /// syslog tag.
    pub prefix: String,
    /// Lines go to standard output.
    pub stdout: bool,
    /// Lines go to the local syslog socket too.
    pub syslog: bool,
    /// The syslog facility's code (`local3`, 19, by default).
    pub facility: u8,
    pub format: Format,
}

/// What goes in a line besides the message.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// Wall-clock time: seconds since the Unix epoch, and nanoseconds.
    pub secs: u64,
    pub nanos: u32,
    /// The process's id, and the line's sequence number (go-logging's `%{id}`).
    pub pid: u32,
    pub id: u64,
    /// The program's name (`%{program}`).
    pub program: &'a str,
}

impl Logging {
    /// One line (with its newline) for a message of `level`.
    pub fn line(&self, level: Level, message: &str, at: &Stamp<'_>) -> String {
        let mut out = String::with_capacity(message.len() + 64);
        match &self.format {
            Format::Default => {
                out.push_str(&self.prefix);
                out.push(' ');
                go_time(&mut out, DEFAULT_LAYOUT, at);
                let _ = write!(out, " ▶ {} {}", level.name(), message);
            }
            Format::Logstash => {
                out.push_str("{\"@timestamp\":\"");
                go_time(&mut out, LOGSTASH_LAYOUT, at);
                let _ = write!(out, "\", \"@version\": 1, \"level\": \"{}\", \"message\": ", level.name());
                json_string(&mut out, message);
                let _ = write!(out, ", \"module\": \"{MODULE}\"}}");
            }
            Format::Custom(pattern) => pattern.render(&mut out, level, message, at),
        }
        out.push('\n');
        out
    }

    /// The datagram for the local syslog socket, as Go's `log/syslog` writes it there
    /// (`<PRI>Jan _2 15:04:05 TAG[PID]: LEVEL > message`; the tag is the prefix, else
    /// the program's name). The priority carries the line's own level.
    pub fn syslog_datagram(&self, level: Level, message: &str, at: &Stamp<'_>) -> Vec<u8> {
        let mut out = String::with_capacity(message.len() + 48);
        let _ = write!(out, "<{}>", u16::from(self.facility) * 8 + u16::from(level.severity()));
        go_time(&mut out, "Jan _2 15:04:05", at);
        let tag = if self.prefix.is_empty() { at.program } else { &self.prefix };
        let _ = write!(out, " {tag}[{}]: {} > {}", at.pid, level.name(), message);
        out.push('\n');
        out.into_bytes()
    }
}

/// go-logging's module name in KrakenD's lines.
pub const MODULE: &str = "KRAKEND";
/// KrakenD's `default` format's time.
const DEFAULT_LAYOUT: &str = "2006/01/02 - 15:04:05.000";
/// KrakenD's `logstash` format's time (its `+00:00` is written as is: Sluice writes UTC).
const LOGSTASH_LAYOUT: &str = "2006-01-02T15:04:05.000+00:00";
/// go-logging's `%{time}` without a layout.
const RFC3339_MILLI: &str = "2006-01-02T15:04:05.999Z07:00";

/// A `custom_format`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A value, written by its printf-style spec (`%{level:.4s}`, `%{id:05d}`).
    Value(Verb, Spec),
    Time(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Message,
    Level,
    Module,
    Pid,
    Program,
    Id,
}

/// Go's `fmt` flags, width and precision for one verb: `-10s`, `.6s`, `05d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    /// `None`: not a spec Sluice writes.
    fn parse(s: &str) -> Option<Spec> {
        let mut rest = s.strip_suffix(['s', 'd', 'v'])?;
        let mut spec = Spec::default();
        loop {
            if let Some(r) = rest.strip_prefix('-') {
                spec.left = true;
                rest = r;
            } else if let Some(r) = rest.strip_prefix('0') {
                spec.zero = true;
                rest = r;
            } else {
                break;
            }
        }
        // Go reads an empty precision (`.s`) as 0.
        let (width, precision) = match rest.split_once('.') {
            Some((w, "")) => (w, Some(0)),
            Some((w, p)) => (w, Some(p.parse().ok()?)),
            None => (rest, None),
        };
        spec.width = if width.is_empty() { 0 } else { width.parse().ok()? };
        spec.precision = precision;
        // No spec writes more than a line's worth of padding.
        (spec.width <= 256).then_some(spec)
    }

    /// Writes `value` (`number`: an integer, whose precision is a minimum of digits,
    /// as Go's `%.3d`; a text's precision cuts it).
    fn write(&self, out: &mut String, value: &str, number: bool) {
        let value: String = match (self.precision, number) {
            (Some(p), false) => value.chars().take(p).collect(),
            (Some(p), true) => format!("{value:0>p$}"),
            (None, _) => value.to_string(),
        };
        let pad = self.width.saturating_sub(value.chars().count());
        // Go pads with zeros only numbers given no precision.
        let fill = if self.zero && !self.left && number && self.precision.is_none() { '0' } else { ' ' };
        if !self.left {
            out.extend(std::iter::repeat_n(fill, pad));
        }
        out.push_str(&value);
        if self.left {
            out.extend(std::iter::repeat_n(' ', pad));
        }
    }
}

/// The verbs a `custom_format` may use.
pub const VERBS: &str = "%{message}, %{level}, %{module}, %{pid}, %{program}, %{id} (each with a printf spec: \
                         %{level:.4s}, %{id:05d}), %{time} (or %{time:LAYOUT}), %{color}";

impl Pattern {
    /// Reads go-logging's pattern syntax; `Err` names the first verb it cannot serve.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("%{") {
            text.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("an unclosed verb at {:?}", &rest[at..]));
            };
            let (verb, arg) = match after[..end].split_once(':') {
                Some((v, a)) => (v, Some(a)),
                None => (&after[..end], None),
            };
            let value = match verb {
                "message" => Some(Verb::Message),
                "level" => Some(Verb::Level),
                "module" => Some(Verb::Module),
                "pid" => Some(Verb::Pid),
                "program" => Some(Verb::Program),
                "id" => Some(Verb::Id),
                _ => None,
            };
            let piece = match (verb, value, arg) {
                (_, Some(v), None) => Some(Piece::Value(v, Spec::default())),
                (_, Some(v), Some(a)) => match Spec::parse(a) {
                    Some(spec) => Some(Piece::Value(v, spec)),
                    None => {
                        return Err(format!("%{{{verb}:{a}}}: not a printf spec Sluice writes (as .4s, -10s, 05d)"));
                    }
                },
                ("time", _, None) => Some(Piece::Time(RFC3339_MILLI.to_string())),
                ("time", _, Some(layout)) => Some(Piece::Time(layout.to_string())),
                // Colours: none in a file or a pipe, where these lines go.
                ("color", _, _) => None,
                _ => {
                    return Err(format!(
                        "%{{{}}} is not a verb Sluice writes (it writes {VERBS}; Go source locations have no \
                         equivalent)",
                        &after[..end]
                    ));
                }
            };
            if let Some(piece) = piece {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
            }
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Pattern(pieces))
    }

    fn render(&self, out: &mut String, level: Level, message: &str, at: &Stamp<'_>) {
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Time(layout) => go_time(out, layout, at),
                Piece::Value(verb, spec) => {
                    let number;
                    let value = match verb {
                        Verb::Message => message,
                        Verb::Level => level.name(),
                        Verb::Module => MODULE,
                        Verb::Program => at.program,
                        Verb::Pid => {
                            number = at.pid.to_string();
                            &number
                        }
                        Verb::Id => {
                            number = at.id.to_string();
                            &number
                        }
                    };
                    spec.write(out, value, matches!(verb, Verb::Pid | Verb::Id));
                }
            }
        }
    }
}

/// Writes a JSON string (quotes and escapes): a message never breaks its line's JSON.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Writes `at` in UTC by a Go time layout (the reference time `Mon Jan 2 15:04:05 MST
/// 2006`, zone `-0700`). Text that is no layout element is written as it is.
fn go_time(out: &mut String, layout: &str, at: &Stamp<'_>) {
    let t = crate::date::civil(at.secs);
    let month = MONTHS[(t.month as usize).saturating_sub(1) % 12];
    let hour12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
    let mut rest = layout;
    while !rest.is_empty() {
        // Fractions: ".000" (fixed) or ".999" (trailing zeros dropped), any length.
        if let Some(digits) = rest.strip_prefix(['.', ',']) {
            let n = digits.bytes().take_while(|&b| b == b'0').count();
            let m = digits.bytes().take_while(|&b| b == b'9').count();
            let (len, trim) = if n > 0 { (n, false) } else { (m, true) };
            if len > 0 && !digits.as_bytes().get(len).is_some_and(u8::is_ascii_digit) {
                let frac = format!("{:09}", at.nanos);
                let mut frac = frac[..len.min(9)].to_string();
                if trim {
                    frac = frac.trim_end_matches('0').to_string();
                }
                if !frac.is_empty() {
                    out.push_str(&rest[..1]);
                    out.push_str(&frac);
                }
                rest = &digits[len..];
                continue;
            }
        }
        let elements: [(&str, String); 24] = [
            ("January", month.to_string()),
            ("Jan", month[..3].to_string()),
            ("Monday", DAYS[t.weekday].to_string()),
            ("Mon", DAYS[t.weekday][..3].to_string()),
            ("MST", "UTC".to_string()),
            ("2006", format!("{:04}", t.year)),
            ("Z07:00", "Z".to_string()),
            ("Z0700", "Z".to_string()),
            ("Z07", "Z".to_string()),
            ("-07:00", "+00:00".to_string()),
            ("-0700", "+0000".to_string()),
            ("-07", "+00".to_string()),
            ("01", format!("{:02}", t.month)),
            ("02", format!("{:02}", t.day)),
            ("_2", format!("{:>2}", t.day)),
            ("06", format!("{:02}", t.year.rem_euclid(100))),
            ("15", format!("{:02}", t.hour)),
            ("03", format!("{hour12:02}")),
            ("04", format!("{:02}", t.minute)),
            ("05", format!("{:02}", t.second)),
            ("PM", if t.hour >= 12 { "PM" } else { "AM" }.to_string()),
            ("pm", if t.hour >= 12 { "pm" } else { "am" }.to_string()),
            ("1", t.month.to_string()),
            ("2", t.day.to_string()),
        ];
        let single: [(&str, String); 3] =
            [("3", hour12.to_string()), ("4", t.minute.to_string()), ("5", t.second.to_string())];
        match elements.iter().chain(single.iter()).find(|(e, _)| rest.starts_with(e)) {
            Some((e, v)) => {
                out.push_str(v);
                rest = &rest[e.len()..];
            }
            None => {
                let c = rest.chars().next().unwrap_or(' ');
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2022-06-15T15:37:02.619Z, a Wednesday.
    const AT: Stamp<'static> = Stamp { secs: 1_655_307_422, nanos: 619_000_000, pid: 42, id: 7, program: "sluice" };

    fn logging(format: Format) -> Logging {
        Logging { level: Level::Info, prefix: "[KRAKEND]".into(), stdout: true, syslog: false, facility: 19, format }
    }

    #[test]
    fn levels_are_read_in_any_case_as_go_logging_reads_them() {
        assert_eq!(Level::parse("info"), Some(Level::Info));
        assert_eq!(Level::parse("Warning"), Some(Level::Warning));
        assert_eq!(Level::parse("NOTICE"), Some(Level::Info));
        assert_eq!(Level::parse("LOUD"), None);
    }

    #[test]
    fn default_lines_are_krakends() {
        assert_eq!(
            logging(Format::Default).line(Level::Info, "Starting the KrakenD instance", &AT),
            "[KRAKEND] 2022/06/15 - 15:37:02.619 ▶ INFO Starting the KrakenD instance\n"
        );
    }

    #[test]
    fn logstash_lines_are_krakends_and_always_json() {
        assert_eq!(
            logging(Format::Logstash).line(Level::Debug, "[ENDPOINT: /test] Building the proxy pipe", &AT),
            "{\"@timestamp\":\"2022-06-15T15:37:02.619+00:00\", \"@version\": 1, \"level\": \"DEBUG\", \"message\": \
             \"[ENDPOINT: /test] Building the proxy pipe\", \"module\": \"KRAKEND\"}\n"
        );
        // go-logging would write the quote and the newline as they are, breaking the JSON.
        let line = logging(Format::Logstash).line(Level::Warning, "a \"quoted\"\nline\u{1}", &AT);
        assert!(line.contains(r#""message": "a \"quoted\"\nline\u0001""#), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn custom_patterns_take_go_logging_verbs_and_go_layouts() {
        let p = Pattern::parse("%{color}%{time:Mon Jan _2 03:04:05.999999 PM -0700 2006} %{level:.4s} %{module}[%{pid}] #%{id} %{program}: %{message}%{color:reset}").unwrap();
        assert_eq!(
            logging(Format::Custom(p)).line(Level::Warning, "hi", &AT),
            "Wed Jun 15 03:37:02.619 PM +0000 2022 WARN KRAKEND[42] #7 sluice: hi\n"
        );
        let p = Pattern::parse("%{id:03d}|%{level:-8s}|%{module:10s}|%{message:.3s}|%{id:.3d}|%{pid:.1d}|%{level:.s}|%{level:05s}|%{id:-4d}|").unwrap();
        assert_eq!(
            logging(Format::Custom(p)).line(Level::Info, "hello", &AT),
            "007|INFO    |   KRAKEND|hel|007|42|| INFO|7   |\n"
        );
        let p = Pattern::parse("%{time} %{message}").unwrap();
        assert_eq!(logging(Format::Custom(p)).line(Level::Info, "x", &AT), "2022-06-15T15:37:02.619Z x\n");
        assert!(
            Pattern::parse("%{shortfile} %{message}")
                .unwrap_err()
                .starts_with("%{shortfile} is not a verb Sluice writes")
        );
        assert_eq!(Pattern::parse("%{message").unwrap_err(), "an unclosed verb at \"%{message\"");
        assert_eq!(
            Pattern::parse("%{level:4}").unwrap_err(),
            "%{level:4}: not a printf spec Sluice writes (as .4s, -10s, 05d)"
        );
        assert!(Pattern::parse("%{id:999999d}").is_err());
    }

    #[test]
    fn syslog_datagrams_are_gos_with_each_lines_severity() {
        let l = logging(Format::Logstash);
        assert_eq!(
            String::from_utf8(l.syslog_datagram(Level::Error, "backend down", &AT)).unwrap(),
            "<155>Jun 15 15:37:02 [KRAKEND][42]: ERROR > backend down\n"
        );
        let quiet = Logging { prefix: String::new(), facility: 16, ..l };
        assert_eq!(
            String::from_utf8(quiet.syslog_datagram(Level::Info, "up", &Stamp { secs: 1_654_300_800, ..AT })).unwrap(),
            "<134>Jun  4 00:00:00 sluice[42]: INFO > up\n"
        );
    }
}
