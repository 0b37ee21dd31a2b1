//! The bot detector (`security/bot-detector`), as krakend-botdetector decides: by the
//! request's `User-Agent` (its first value), in this order: none or empty is a bot
//! only with `empty_user_agent_is_bot`; one in `allow` (the whole string, exact) is
//! not a bot; one in `deny` is; one that any of `patterns` matches (RE2 syntax,
//! anywhere in the string) is. A bot is answered 403 with an empty body, before any
//! backend is called.
//!
//! At the root it runs on every request but the health page's (and a router redirect,
//! which KrakenD answers before any handler), 404s and 405s included, after CORS; on
//! an endpoint it is the guard stage's first check.
//!
//! KrakenD keeps an LRU of verdicts (`cache_size`) in front of its patterns, tried one
//! by one; here the patterns are one compiled set, tested in one pass, so the field is
//! accepted and checked but nothing is cached.

use http::StatusCode;
use regex::bytes::RegexSet;

use crate::config::BotDetectorConfig;
use crate::http1::Head;
use crate::request::Reply;

/// A compiled `security/bot-detector`.
#[derive(Debug, Clone)]
pub struct BotDetector {
    allow: foldhash::HashSet<Vec<u8>>,
    deny: foldhash::HashSet<Vec<u8>>,
    patterns: RegexSet,
    empty_is_bot: bool,
}

impl BotDetector {
    /// The detector `c` describes; its patterns were checked when it was read.
    pub fn compile(c: &BotDetectorConfig) -> Result<BotDetector, regex::Error> {
        Ok(BotDetector {
            allow: c.allow.iter().map(|s| s.as_bytes().to_vec()).collect(),
            deny: c.deny.iter().map(|s| s.as_bytes().to_vec()).collect(),
            patterns: RegexSet::new(&c.patterns)?,
            empty_is_bot: c.empty_user_agent_is_bot,
        })
    }

    /// Whether a request with this `User-Agent` (`None`: none sent) is a bot.
    pub fn is_bot(&self, user_agent: Option<&[u8]>) -> bool {
        match user_agent {
            None | Some([]) => self.empty_is_bot,
            Some(ua) if self.allow.contains(ua) => false,
            Some(ua) if self.deny.contains(ua) => true,
            Some(ua) => self.patterns.is_match(ua),
        }
    }

    /// The answer to a request with these headers when it comes from a bot: 403, no
    /// body.
    pub fn refuse(&self, headers: &Head) -> Option<Reply> {
        self.is_bot(headers.get("user-agent")).then(|| Reply::empty(StatusCode::FORBIDDEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(empty_is_bot: bool) -> BotDetector {
        BotDetector::compile(&BotDetectorConfig {
            allow: vec!["MyAndroidClient/1.0".into(), "Pingdom.com_bot_version_1.1".into()],
            deny: vec!["facebookexternalhit/1.1".into()],
            patterns: vec![r"(Pingdom.com_bot_version_)(\d+)\.(\d+)".into(), r"(?i)curl/\d".into()],
            cache_size: 0,
            empty_user_agent_is_bot: empty_is_bot,
        })
        .unwrap()
    }

    #[test]
    fn allow_then_deny_then_patterns() {
        let d = detector(false);
        let bot = |ua: &str| d.is_bot(Some(ua.as_bytes()));
        // Allowed even though a pattern matches it.
        assert!(!bot("Pingdom.com_bot_version_1.1"));
        assert!(bot("Pingdom.com_bot_version_1.2"));
        assert!(bot("facebookexternalhit/1.1"));
        // Exact: case and the whole string count.
        assert!(!bot("FacebookExternalHit/1.1"));
        assert!(!bot("facebookexternalhit/1.1 extra"));
        // Patterns match anywhere; (?i) as in Go.
        assert!(bot("Mozilla CURL/8.5.0"));
        assert!(!bot("Mozilla/5.0 (X11; Linux x86_64)"));
        assert!(!bot("MyAndroidClient/1.0"));
        assert!(!d.is_bot(None) && !d.is_bot(Some(b"")));
        let strict = detector(true);
        assert!(strict.is_bot(None) && strict.is_bot(Some(b"")));
        // A non-UTF-8 agent is matched as bytes, not refused for its encoding.
        assert!(!strict.is_bot(Some(b"agent \xff")));
    }

    #[test]
    fn a_bot_gets_403_with_no_body() {
        let d = detector(false);
        let head = Head::from_fields([("User-Agent", &b"facebookexternalhit/1.1"[..])]);
        let reply = d.refuse(&head).expect("refused");
        assert_eq!((reply.status, reply.body.len(), reply.headers.len()), (StatusCode::FORBIDDEN, 0, 0));
        assert!(d.refuse(&Head::from_fields([("User-Agent", &b"Mozilla/5.0"[..])])).is_none());
    }
}
