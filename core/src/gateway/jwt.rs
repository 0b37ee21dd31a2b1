//! `auth/validator`: the endpoint's JSON Web Token check, as krakend-jose makes it
//! (go-jose v3 and go-auth0 underneath).
//!
//! **The token** comes from the `Authorization` header (`auth_header_name`): its first
//! value, less a leading `Bearer ` (any case) when it is longer than that; a value
//! without the prefix is read as a bare token. Only when the header is absent or empty
//! is the cookie `cookie_key` (default `access_token`) read, as it is.
//!
//! **The check**, in krakend-jose's order: a signed token in compact form (three
//! base64url parts; whitespace anywhere is dropped, as go-jose drops it), whose
//! header's `alg` is exactly the configured one and names no `crit` extension; the key
//! found by the strategy (`kid` by default: the key with that `kid`, or for a token
//! without one a key without one); the signature; then the claims: `exp`, `nbf` and
//! `iat` when present, with `leeway` (at least one second, as KrakenD), `iss` equal to
//! `issuer`, `aud` holding every `audience`; then the endpoint's CEL token checks
//! ([`crate::gateway::cel`]). Any failure is 401 with an empty body.
//! Then the roles (any of `roles` in the `roles_key` claim, an array or a
//! space-separated string) and the scopes (any, or all with `scopes_matcher: "all"`, of
//! `scopes` in `scopes_key`): 403 with an empty body.
//!
//! **What passes on:** the claims, for `propagate_claims` (backend headers, rendered as
//! Go's `Claims.Get` renders them; a missing claim sets the header empty, a client's
//! header of that name is replaced; they cross to a backend only under its
//! `input_headers`, as in KrakenD) and `{JWT.claim}` in a `url_pattern` (top-level
//! claims, as KrakenD).
//!
//! The keys are read when the configuration is compiled (`jwk_local_path`, or
//! `jwk_url` fetched then by the loader: see [`crate::tls::Environment::fetch`]), each
//! parsed once (JWK types from the `jsonwebtoken` crate), into a [`KeySource`]. A fetched set is fetched again by the driver's
//! refresher ([`KeySource::due`]): every `cache_duration`, and soon after a token names
//! a key the set lacks (a key the issuer added), at most once per cooldown; the new set
//! replaces the old one between two requests, with no lock on the request path.
//! Signatures are checked with `ring` (rustls's provider), ES512 (which it lacks)
//! with RustCrypto's `p521`; the claims here, as go-jose.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use serde_json::{Map, Value};

use crate::config::{JwtConfig, KeyStrategy, ScopesMatcher};
use crate::http1::Head;

/// A signature algorithm KrakenD takes for `alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// Everything `jsonwebtoken` verifies.
    Jose(Algorithm),
    /// ECDSA on P-521 with SHA-512.
    Es512,
}

impl Alg {
    /// The algorithm named `name`, exactly as KrakenD spells it.
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "ES512" => Alg::Es512,
            "EdDSA" | "HS256" | "HS384" | "HS512" | "RS256" | "RS384" | "RS512" | "ES256" | "ES384" | "PS256"
            | "PS384" | "PS512" => Alg::Jose(name.parse().ok()?),
            _ => return None,
        })
    }

    /// The names `alg` takes, for a refusal.
    pub const NAMES: &'static str =
        "EdDSA, HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512";
}

/// One key of the set, parsed once.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// The `x5t` thumbprint, base64url as the set gives it.
    x5t: Option<String>,
    material: Material,
}

/// What a key verifies with.
#[derive(Clone)]
enum Material {
    /// RSA: the modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed point on P-256 or P-384.
    Ec { curve: EllipticCurve, point: Vec<u8> },
    /// A point on P-521 (ES512, which ring lacks).
    P521(Box<p521::ecdsa::VerifyingKey>),
    /// An Ed25519 public key.
    Ed25519(Vec<u8>),
    /// An HMAC secret (`oct`).
    Secret(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the material: an `oct` key is a secret.
        f.debug_struct("Key").field("kid", &self.kid).field("x5t", &self.x5t).finish_non_exhaustive()
    }
}

/// A JSON Web Key Set, parsed.
#[derive(Debug, Clone)]
pub struct KeySet(Vec<Key>);

/// base64url, padded or not (go-jose takes both in a JWK).
fn b64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).or_else(|_| URL_SAFE.decode(text)).ok().filter(|b| !b.is_empty())
}

impl KeySet {
    /// Parses a JWK Set (`{"keys": [...]}`). As go-jose, a key that cannot be read
    /// refuses the whole set, and so does an empty one.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWK set ({{\"keys\": [...]}}): {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWK set has no keys".into());
        }
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, raw) in set.keys.into_iter().enumerate() {
            let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("keys[{i}]: not a JWK: {e}"))?;
            let bad = |what: &str| format!("keys[{i}]: {what}");
            let material = match &jwk.algorithm {
                AlgorithmParameters::RSA(p) => {
                    // Big-endian with any leading zeros dropped (go-jose takes them;
                    // ring does not).
                    let unsigned = |text: &str, what: &str| {
                        let bytes =
                            b64(text).ok_or_else(|| bad(&format!("an RSA key whose {what} is not base64url")))?;
                        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
                        Ok::<_, String>(bytes[first..].to_vec())
                    };
                    let (n, e) = (unsigned(&p.n, "n")?, unsigned(&p.e, "e")?);
                    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
                    if !(2048..=8192).contains(&bits) {
                        return Err(bad(&format!(
                            "an RSA key of {bits} bits: Sluice verifies 2048 to 8192 (ring's bounds; a smaller key is \
                             breakable)"
                        )));
                    }
                    Material::Rsa { n, e }
                }
                AlgorithmParameters::EllipticCurve(p) => {
                    let (x, y) = (b64(&p.x), b64(&p.y));
                    let (Some(x), Some(y)) = (x, y) else { return Err(bad("an EC key whose x or y is not base64url")) };
                    let point = [&[4u8][..], &x, &y].concat();
                    match p.curve {
                        EllipticCurve::P521 => Material::P521(Box::new(
                            p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                                .map_err(|_| bad("not a point of P-521"))?,
                        )),
                        EllipticCurve::P256 | EllipticCurve::P384 => {
                            let size = if p.curve == EllipticCurve::P256 { 32 } else { 48 };
                            if x.len() != size || y.len() != size {
                                return Err(bad("x or y is not the curve's size"));
                            }
                            Material::Ec { curve: p.curve.clone(), point }
                        }
                        _ => return Err(bad("an EC key on a curve JWS does not use")),
                    }
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Material::Ed25519(b64(&p.x).filter(|x| x.len() == 32).ok_or_else(|| bad("not an Ed25519 key"))?)
                }
                AlgorithmParameters::OctetKey(p) => {
                    Material::Secret(b64(&p.value).ok_or_else(|| bad("an oct key whose k is not base64url"))?)
                }
                _ => return Err(bad("unknown key type")),
            };
            keys.push(Key { kid: jwk.common.key_id.clone(), x5t: jwk.common.x509_sha1_fingerprint.clone(), material });
        }
        Ok(KeySet(keys))
    }

    /// The key a token names, by the strategy. As go-auth0's key cache, the last key
    /// with that identifier wins.
    fn find(&self, strategy: KeyStrategy, kid: &str, x5t: &str) -> Option<&Key> {
        let x5t = if x5t.is_empty() { kid } else { x5t };
        self.0.iter().rev().find(|k| {
            let kid_is = k.kid.as_deref().unwrap_or("") == kid;
            let x5t_is = k.x5t.as_deref().unwrap_or("") == x5t;
            match strategy {
                KeyStrategy::Kid => kid_is,
                KeyStrategy::X5t => x5t_is,
                KeyStrategy::KidX5t => kid_is && x5t_is,
            }
        })
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A validator's key set, and where it came from: a file (read once) or a URL,
/// fetched again by the driver when [`KeySource::due`] says so.
#[derive(Debug)]
pub struct KeySource {
    keys: ArcSwap<KeySet>,
    refresh: Option<Refresh>,
}

#[derive(Debug)]
struct Refresh {
    request: crate::tls::FetchRequest,
    every: Duration,
    cooldown: Duration,
    /// A token named a key the set lacks since the last fetch.
    wanted: AtomicBool,
}

impl KeySource {
    /// A set that is never fetched again (a file's, or one built in code).
    pub fn fixed(keys: KeySet) -> Arc<KeySource> {
        Arc::new(KeySource { keys: ArcSwap::from_pointee(keys), refresh: None })
    }

    /// A set fetched by `request`, fetched again every `every` and, when a token
    /// names a key it lacks, after `cooldown` since the last fetch.
    pub fn fetched(
        keys: KeySet,
        request: crate::tls::FetchRequest,
        every: Duration,
        cooldown: Duration,
    ) -> Arc<KeySource> {
        let refresh = Refresh { request, every, cooldown, wanted: AtomicBool::new(false) };
        Arc::new(KeySource { keys: ArcSwap::from_pointee(keys), refresh: Some(refresh) })
    }

    /// What to fetch again, for a set that came from a URL.
    pub fn request(&self) -> Option<&crate::tls::FetchRequest> {
        self.refresh.as_ref().map(|r| &r.request)
    }

    /// Whether this is the set fetched by `request` every `every`, with `cooldown`
    /// (endpoints that name the same share it).
    pub fn is(&self, request: &crate::tls::FetchRequest, every: Duration, cooldown: Duration) -> bool {
        self.refresh.as_ref().is_some_and(|r| &r.request == request && r.every == every && r.cooldown == cooldown)
    }

    /// Whether the set fetched at `last` should be fetched again at `now`: its
    /// `cache_duration` is over, or a token asked for a key it lacks and the cooldown
    /// is over. Never for a file's.
    pub fn due(&self, last: Instant, now: Instant) -> bool {
        let Some(r) = &self.refresh else { return false };
        let since = now.saturating_duration_since(last);
        since >= r.every || (since >= r.cooldown && r.wanted.load(Ordering::Relaxed))
    }

    /// Puts a newly fetched set in place: the next token is checked with it.
    pub fn replace(&self, keys: KeySet) {
        if let Some(r) = &self.refresh {
            r.wanted.store(false, Ordering::Relaxed);
        }
        self.keys.store(Arc::new(keys));
    }

    /// The set now.
    pub fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// A token named a key the set lacks: asks for an early fetch.
    fn want(&self) {
        if let Some(r) = &self.refresh
            && !r.wanted.load(Ordering::Relaxed)
        {
            r.wanted.store(true, Ordering::Relaxed);
        }
    }
}

/// A claim path: a top-level name, or the steps of a dotted one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimPath(Vec<String>);

impl ClaimPath {
    /// `name` split at dots when `nested` (KrakenD never splits a name that starts
    /// with `http`: namespaced claims are URLs).
    fn of(name: &str, nested: bool) -> ClaimPath {
        if nested && name.contains('.') && !name.starts_with("http") {
            ClaimPath(name.split('.').map(str::to_string).collect())
        } else {
            ClaimPath(vec![name.to_string()])
        }
    }

    fn lookup<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let (first, rest) = self.0.split_first()?;
        let mut v = claims.get(first)?;
        for step in rest {
            v = v.as_object()?.get(step)?;
        }
        Some(v)
    }
}

/// A compiled `auth/validator`.
#[derive(Debug, Clone)]
pub struct Validator {
    alg: Alg,
    keys: Arc<KeySource>,
    strategy: KeyStrategy,
    header: String,
    cookie: String,
    leeway: u64,
    issuer: Option<String>,
    audience: Vec<String>,
    roles_key: ClaimPath,
    roles: Vec<String>,
    scopes_key: Option<ClaimPath>,
    scopes: Vec<String>,
    scopes_all: bool,
    propagate: Vec<(ClaimPath, HeaderName)>,
    /// An array claim gives one header value per item.
    preserve_array: bool,
    /// The endpoint's CEL token checks (`validation/cel` expressions naming `JWT`).
    checks: Option<Arc<crate::gateway::cel::Checks>>,
}

/// A token that passed: its claims, and the headers they give backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub claims: Map<String, Value>,
    /// `propagate_claims`, rendered (names lowercase); a preserved empty array gives
    /// its header no value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Every header `propagate_claims` names: the client's of these names never reach
    /// a backend, whatever the claims hold.
    pub replaces: Vec<HeaderName>,
}

impl Token {
    /// `{JWT.name}`: a top-level claim as KrakenD renders it (none when absent).
    pub fn claim_text(&self, name: &str) -> Option<String> {
        self.claims.get(name).map(render_claim)
    }
}

impl Validator {
    /// Compiles `cfg` with the key set the loader read for it (an unknown `alg` is
    /// refused when the file is read; here, for a configuration built in code).
    pub fn compile(cfg: &JwtConfig, keys: Arc<KeySource>) -> Result<Validator, String> {
        let alg = Alg::parse(&cfg.alg)
            .ok_or_else(|| format!("{:?} is not an algorithm KrakenD validates: {}", cfg.alg, Alg::NAMES))?;
        Ok(Validator {
            alg,
            keys,
            strategy: cfg.key_identify_strategy,
            header: cfg.auth_header_name.clone(),
            cookie: cfg.cookie_key.clone(),
            leeway: cfg.leeway.as_secs().max(1),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            roles_key: ClaimPath::of(&cfg.roles_key, cfg.roles_key_is_nested),
            roles: cfg.roles.clone(),
            scopes_key: cfg.scopes_key.as_deref().map(|k| ClaimPath::of(k, true)),
            scopes: cfg.scopes.clone(),
            scopes_all: cfg.scopes_matcher == ScopesMatcher::All,
            propagate: cfg
                .propagate_claims
                .iter()
                .map(|(claim, header)| (ClaimPath::of(claim, true), header.clone()))
                .collect(),
            preserve_array: cfg.propagate_claims_preserve_array,
            checks: None,
        })
    }

    /// With the endpoint's CEL token checks: run after the token's dates, issuer and
    /// audience, before its roles (krakend-jose's order); one that does not pass is a
    /// 401.
    pub fn with_checks(mut self, checks: Option<Arc<crate::gateway::cel::Checks>>) -> Validator {
        self.checks = checks;
        self
    }

    /// Checks the request's token at `wall`: the token, or the status to answer (401
    /// or 403, with an empty body) and why (for the debug log).
    pub fn check(&self, headers: &Head, wall: SystemTime) -> Result<Token, (StatusCode, &'static str)> {
        let unauthorized = |why| (StatusCode::UNAUTHORIZED, why);
        let raw = self.token(headers).ok_or(unauthorized("no token"))?;
        let claims = self.verify(&raw).map_err(unauthorized)?;
        let since = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        self.valid_now(&claims, since.as_secs()).map_err(unauthorized)?;
        if let Some(checks) = &self.checks
            && checks.check_token(&claims, (since.as_secs(), since.subsec_millis())).is_err()
        {
            return Err(unauthorized("a CEL token check refused it"));
        }
        if !self.roles.is_empty() && !self.has_role(&claims) {
            return Err((StatusCode::FORBIDDEN, "no role asked for"));
        }
        if let Some(key) = &self.scopes_key
            && !self.scopes.is_empty()
            && !self.has_scopes(key, &claims)
        {
            return Err((StatusCode::FORBIDDEN, "not the scopes asked for"));
        }
        let mut out = Vec::with_capacity(self.propagate.len());
        for (claim, name) in &self.propagate {
            let texts = match claim.lookup(&claims) {
                Some(Value::Array(items)) if self.preserve_array => items.iter().map(go_v).collect(),
                Some(v) => vec![render_claim(v)],
                None => vec![String::new()],
            };
            for text in texts {
                // A signed claim is still the issuer's text: a control character
                // cannot become a header (Go's client refuses the call; here, the token).
                let value = HeaderValue::from_str(&text)
                    .map_err(|_| unauthorized("a propagated claim is not a header value"))?;
                out.push((name.clone(), value));
            }
        }
        let replaces = self.propagate.iter().map(|(_, name)| name.clone()).collect();
        Ok(Token { claims, headers: out, replaces })
    }

    /// The token text: the header's (first value), else the cookie's.
    fn token(&self, headers: &Head) -> Option<Vec<u8>> {
        if let Some(v) = headers.get(&self.header).filter(|v| !v.is_empty()) {
            let v = if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") { &v[7..] } else { v };
            return Some(v.to_vec());
        }
        for cookies in headers.get_all("cookie") {
            for pair in cookies.split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                if let Some(eq) = pair.iter().position(|&b| b == b'=')
                    && &pair[..eq] == self.cookie.as_bytes()
                {
                    let value = &pair[eq + 1..];
                    let value = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
                    return (!value.is_empty()).then(|| value.to_vec());
                }
            }
        }
        None
    }

    /// Parses the compact form, checks the header and the signature: the claims.
    fn verify(&self, raw: &[u8]) -> Result<Map<String, Value>, &'static str> {
        let mut text: Vec<u8> = raw.to_vec();
        text.retain(|b| !b.is_ascii_whitespace());
        let text = std::str::from_utf8(&text).map_err(|_| "not a token")?;
        let mut parts = text.split('.');
        let (Some(head), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a signed token in compact form");
        };
        let header: Value = decode_json(head).ok_or("the token's header is not base64url JSON")?;
        let header = header.as_object().ok_or("the token's header is not an object")?;
        if header.get("alg").and_then(Value::as_str).and_then(Alg::parse) != Some(self.alg) {
            return Err("the token's alg is not the configured one");
        }
        if header.contains_key("crit") {
            return Err("the token names critical extensions");
        }
        let text_of = |name| header.get(name).and_then(Value::as_str).unwrap_or("");
        let keys = self.keys.keys.load();
        let Some(key) = keys.find(self.strategy, text_of("kid"), text_of("x5t")) else {
            self.keys.want();
            return Err("no key for the token");
        };
        let signed = &text.as_bytes()[..head.len() + 1 + payload.len()];
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| "the signature is not base64url")?;
        let good = verify(self.alg, &key.material, signed, &signature);
        if !good {
            return Err("bad signature");
        }
        match decode_json(payload) {
            Some(Value::Object(claims)) => Ok(claims),
            _ => Err("the token's claims are not a base64url JSON object"),
        }
    }

    /// `exp`, `nbf`, `iat` (with the leeway), `iss` and `aud`, as go-jose's
    /// `ValidateWithLeeway`.
    fn valid_now(&self, claims: &Map<String, Value>, now: u64) -> Result<(), &'static str> {
        let date = |name| -> Result<Option<i64>, &'static str> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                // Go's NumericDate: seconds, any fraction dropped.
                Some(Value::Number(n)) => Ok(Some(n.as_f64().ok_or("a date claim is not a number")? as i64)),
                Some(_) => Err("a date claim is not a number"),
            }
        };
        let (now, leeway) = (now as i64, self.leeway as i64);
        if let Some(exp) = date("exp")?
            && now - leeway > exp
        {
            return Err("the token expired");
        }
        if let Some(nbf) = date("nbf")?
            && now + leeway < nbf
        {
            return Err("the token is not valid yet");
        }
        if let Some(iat) = date("iat")?
            && now + leeway < iat
        {
            return Err("the token was issued in the future");
        }
        if let Some(iss) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss)
        {
            return Err("not the issuer asked for");
        }
        if !self.audience.is_empty() {
            let aud: Vec<&str> = match claims.get("aud") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(items)) => {
                    items.iter().map(|v| v.as_str().ok_or("the aud claim is not strings")).collect::<Result<_, _>>()?
                }
                Some(_) => return Err("the aud claim is not strings"),
            };
            if !self.audience.iter().all(|a| aud.contains(&a.as_str())) {
                return Err("not the audience asked for");
            }
        }
        Ok(())
    }

    fn has_role(&self, claims: &Map<String, Value>) -> bool {
        let held = words(self.roles_key.lookup(claims));
        self.roles.iter().any(|r| held.contains(&r.as_str()))
    }

    fn has_scopes(&self, key: &ClaimPath, claims: &Map<String, Value>) -> bool {
        let held = words(key.lookup(claims));
        if held.is_empty() {
            return false;
        }
        if self.scopes_all {
            self.scopes.iter().all(|s| held.contains(&s.as_str()))
        } else {
            self.scopes.iter().any(|s| held.contains(&s.as_str()))
        }
    }
}

/// Whether `signature` is `alg`'s over `signed` with `key` (a key of another kind,
/// or another curve, never is: an HMAC token cannot be keyed with a public key).
fn verify(alg: Alg, key: &Material, signed: &[u8], signature: &[u8]) -> bool {
    use ring::signature as sig;
    match (alg, key) {
        (Alg::Es512, Material::P521(k)) => {
            use p521::ecdsa::signature::Verifier;
            p521::ecdsa::Signature::from_slice(signature).is_ok_and(|s| k.verify(signed, &s).is_ok())
        }
        (Alg::Jose(a), Material::Rsa { n, e }) => {
            let scheme: &sig::RsaParameters = match a {
                Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            sig::RsaPublicKeyComponents { n, e }.verify(scheme, signed, signature).is_ok()
        }
        (Alg::Jose(a), Material::Ec { curve, point }) => {
            let scheme: &dyn sig::VerificationAlgorithm = match (a, curve) {
                (Algorithm::ES256, EllipticCurve::P256) => &sig::ECDSA_P256_SHA256_FIXED,
                (Algorithm::ES384, EllipticCurve::P384) => &sig::ECDSA_P384_SHA384_FIXED,
                _ => return false,
            };
            sig::UnparsedPublicKey::new(scheme, point).verify(signed, signature).is_ok()
        }
        (Alg::Jose(Algorithm::EdDSA), Material::Ed25519(x)) => {
            sig::UnparsedPublicKey::new(&sig::ED25519, x).verify(signed, signature).is_ok()
        }
        (Alg::Jose(a), Material::Secret(secret)) => {
            let hmac = match a {
                Algorithm::HS256 => ring::hmac::HMAC_SHA256,
                Algorithm::HS384 => ring::hmac::HMAC_SHA384,
                Algorithm::HS512 => ring::hmac::HMAC_SHA512,
                _ => return false,
            };
            // Compared in constant time.
            ring::hmac::verify(&ring::hmac::Key::new(hmac, secret), signed, signature).is_ok()
        }
        _ => false,
    }
}

/// A roles or scopes claim: an array's strings, or a string split at single spaces.
fn words(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => s.split(' ').collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A base64url part (padding tolerated, as Go's decoder after go-jose strips it) as JSON.
fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&b64(part)?).ok()
}

/// A claim as krakend-jose's `Claims.Get` writes it: a string as it is, a whole number
/// (within 1e-6) in digits, another number with six decimals, an array's items with
/// Go's `%v` joined by commas, anything else as Go's `json.Marshal` writes it.
fn render_claim(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            match n.as_i64() {
                Some(i) => i.to_string(),
                None if (f - f.round()).abs() < 1e-6 => format!("{}", f.round() as i64),
                None => format!("{f:.6}"),
            }
        }
        Value::Array(items) => items.iter().map(go_v).collect::<Vec<_>>().join(","),
        other => crate::gateway::json::go_marshal(other),
    }
}

/// Go's `%v` of a decoded JSON value.
fn go_v(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => go_float(n.as_f64().unwrap_or(0.0)),
        Value::Array(items) => format!("[{}]", items.iter().map(go_v).collect::<Vec<_>>().join(" ")),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let pairs: Vec<String> = keys.iter().map(|k| format!("{k}:{}", go_v(&map[*k]))).collect();
            format!("map[{}]", pairs.join(" "))
        }
    }
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): the shortest
/// digits, in exponent form when the exponent is under -4 or at least 6
/// (`1.7e+09`, `1e-05`), else in decimals.
fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    // The shortest round-trip digits and the decimal exponent, from Rust's `{:e}`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}
