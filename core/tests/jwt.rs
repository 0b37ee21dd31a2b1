//! `auth/validator` rule by rule, on tokens signed by another JOSE implementation
//! (Python's `cryptography` over OpenSSL: `fixtures/jwt/make.py`), each at a chosen
//! wall-clock time: every algorithm KrakenD takes, the header and key checks, the
//! dates with their leeway, issuer and audience, roles and scopes (401 or 403), where
//! the token is read from, and the claims as backends receive them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::Value;
use sluice_core::gateway::jwt::{KeySet, KeySource, Token, Validator};
use sluice_core::http1::Head;

const KEYS: &str = include_str!("fixtures/jwt/keys.json");
const TOKENS: &str = include_str!("fixtures/jwt/tokens.json");

/// Within the fixtures' validity (from 1,700,000,000 to 4,000,000,000).
const NOW: u64 = 1_750_000_000;

fn token(name: &str) -> String {
    let v: Value = serde_json::from_str(TOKENS).unwrap();
    v["tokens"][name].as_str().unwrap_or_else(|| panic!("no token {name}")).to_string()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A validator from the fields of an `auth/validator` block (keys from the fixture).
fn validator(fields: &str) -> Validator {
    validator_with(fields, KEYS)
}

fn validator_with(fields: &str, keys: &str) -> Validator {
    let text = format!(
        r#"{{"version": 3, "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["http://b"], "url_pattern": "/"}}],
            "extra_config": {{"auth/validator": {{"jwk_local_path": "keys.json", {fields}}}}}}}]}}"#
    );
    let parsed = sluice_core::config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let cfg = parsed.config.endpoints[0].jwt.as_ref().expect("a validator");
    Validator::compile(cfg, KeySource::fixed(KeySet::parse(keys.as_bytes()).unwrap())).unwrap()
}

fn bearer(t: &str) -> Head {
    Head::from_fields([("Authorization", format!("Bearer {t}").as_bytes())])
}

fn check(v: &Validator, head: &Head) -> Result<Token, StatusCode> {
    v.check(head, at(NOW)).map_err(|(status, _)| status)
}

#[test]
fn every_algorithm_krakend_takes_verifies() {
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384",
        "HS512",
    ] {
        let v = validator(&format!(r#""alg": "{alg}""#));
        let got = check(&v, &bearer(&token(alg))).unwrap_or_else(|s| panic!("{alg}: {s}"));
        assert_eq!(got.claims["sub"], "1234567890", "{alg}");
    }
}

#[test]
fn only_the_configured_alg_and_a_good_signature_pass() {
    let v = validator(r#""alg": "RS256""#);
    for name in [
        "ES256",
        "PS256",
        "HS256",
        "none",
        "RS256-as-HS256",
        "RS256-confused-pem",
        "RS256-confused-n",
        "RS256-bad-signature",
        "RS256-crit",
    ] {
        assert_eq!(check(&v, &bearer(&token(name))).err(), Some(StatusCode::UNAUTHORIZED), "{name}");
    }
    // HS256 expected, a token keyed with a public key of the set: only `oct` keys sign HMAC.
    let hs = validator(r#""alg": "HS256""#);
    for name in ["HS256-keyed-with-ec-point", "RS256-confused-pem", "RS256-confused-n"] {
        assert_eq!(check(&hs, &bearer(&token(name))).err(), Some(StatusCode::UNAUTHORIZED), "{name}");
    }
    // A signature made for another algorithm of the same key (RS256 with PS256's).
    let rs = token("RS256");
    let ps = token("PS256");
    let forged = format!("{}.{}", &rs[..rs.rfind('.').unwrap()], &ps[ps.rfind('.').unwrap() + 1..]);
    assert_eq!(check(&v, &bearer(&forged)).err(), Some(StatusCode::UNAUTHORIZED));
    // ES512 with a P-384 signature in it.
    let es = validator(r#""alg": "ES512""#);
    let t512 = token("ES512");
    let t384 = token("ES384");
    let forged = format!("{}.{}", &t512[..t512.rfind('.').unwrap()], &t384[t384.rfind('.').unwrap() + 1..]);
    assert_eq!(check(&es, &bearer(&forged)).err(), Some(StatusCode::UNAUTHORIZED));
    // Not a token at all, and a JWE-like five parts.
    for bad in ["", "abc", "a.b", "a.b.c", "a.b.c.d.e", "e30.e30.", "...."] {
        assert_eq!(check(&v, &bearer(bad)).err(), Some(StatusCode::UNAUTHORIZED), "{bad:?}");
    }
}

#[test]
fn the_key_is_found_by_kid() {
    let v = validator(r#""alg": "RS256""#);
    // No kid, and every key has one; a kid not in the set (no refetch: the set is
    // read once).
    for name in ["RS256-no-kid", "RS256-unknown-kid"] {
        assert_eq!(check(&v, &bearer(&token(name))).err(), Some(StatusCode::UNAUTHORIZED), "{name}");
    }
    // A set whose RSA key has no kid takes the token without one, and only it.
    let mut keys: Value = serde_json::from_str(KEYS).unwrap();
    keys["keys"][0].as_object_mut().unwrap().remove("kid");
    let v = validator_with(r#""alg": "RS256""#, &keys.to_string());
    assert!(check(&v, &bearer(&token("RS256-no-kid"))).is_ok());
    assert_eq!(check(&v, &bearer(&token("RS256"))).err(), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn the_key_is_found_by_x5t_when_asked() {
    // The fixtures' tokens carry a kid and no x5t: x5t then compares their kid.
    let mut keys: Value = serde_json::from_str(KEYS).unwrap();
    keys["keys"][0]["x5t"] = "rsa".into();
    let with = |strategy: &str, keys: &Value| {
        validator_with(&format!(r#""alg": "RS256", "key_identify_strategy": "{strategy}""#), &keys.to_string())
    };
    assert!(check(&with("x5t", &keys), &bearer(&token("RS256"))).is_ok());
    assert!(check(&with("kid_x5t", &keys), &bearer(&token("RS256"))).is_ok());
    keys["keys"][0]["x5t"] = "another".into();
    for strategy in ["x5t", "kid_x5t"] {
        assert_eq!(check(&with(strategy, &keys), &bearer(&token("RS256"))).err(), Some(StatusCode::UNAUTHORIZED));
    }
    assert!(check(&with("kid", &keys), &bearer(&token("RS256"))).is_ok());
}

#[test]
fn rsa_keys_are_read_as_go_jose_reads_them() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut keys: Value = serde_json::from_str(KEYS).unwrap();
    // A modulus with a leading zero byte is the same key.
    let n = URL_SAFE_NO_PAD.decode(keys["keys"][0]["n"].as_str().unwrap()).unwrap();
    keys["keys"][0]["n"] = URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()).into();
    let v = validator_with(r#""alg": "RS256""#, &keys.to_string());
    assert!(check(&v, &bearer(&token("RS256"))).is_ok());
    // Under 2048 bits: refused when the set is read, with the key's place.
    keys["keys"][0]["n"] = URL_SAFE_NO_PAD.encode([0xc1u8; 128]).into();
    let e = KeySet::parse(keys.to_string().as_bytes()).unwrap_err();
    assert_eq!(
        e,
        "keys[0]: an RSA key of 1024 bits: Sluice verifies 2048 to 8192 (ring's bounds; a smaller key is breakable)"
    );
}

#[test]
fn dates_with_the_leeway() {
    let v = validator(r#""alg": "RS256""#);
    let t = bearer(&token("RS256"));
    let status = |v: &Validator, secs| v.check(&t, at(secs)).err().map(|(s, _)| s);
    // exp 4,000,000,000: one second of leeway by default (and at least).
    assert_eq!(status(&v, 4_000_000_001), None);
    assert_eq!(status(&v, 4_000_000_002), Some(StatusCode::UNAUTHORIZED));
    // nbf and iat 1,700,000,000.
    assert_eq!(status(&v, 1_699_999_999), None);
    assert_eq!(status(&v, 1_699_999_998), Some(StatusCode::UNAUTHORIZED));
    let v = validator(r#""alg": "RS256", "leeway": "1m""#);
    assert_eq!(status(&v, 4_000_000_060), None);
    assert_eq!(status(&v, 4_000_000_061), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(status(&v, 1_699_999_940), None);
    let v = validator(r#""alg": "RS256", "leeway": "0s""#);
    assert_eq!(status(&v, 4_000_000_001), None, "under a second counts as one");
    assert_eq!(check(&v, &bearer(&token("RS256-expired"))).err(), Some(StatusCode::UNAUTHORIZED));
    // A token without dates never expires; a date that is not a number is refused.
    let v = validator(r#""alg": "RS256""#);
    assert!(v.check(&bearer(&token("RS256-minimal")), at(5_000_000_000)).is_ok());
    assert_eq!(check(&v, &bearer(&token("RS256-exp-string"))).err(), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn issuer_and_every_audience() {
    let ok = |fields: &str, name: &str| check(&validator(fields), &bearer(&token(name))).err();
    assert_eq!(ok(r#""alg": "RS256", "issuer": "https://idp.example""#, "RS256"), None);
    assert_eq!(ok(r#""alg": "RS256", "issuer": "https://idp.example/""#, "RS256"), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(
        ok(r#""alg": "RS256", "issuer": "https://idp.example""#, "RS256-minimal"),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(ok(r#""alg": "RS256", "audience": ["sluice"]"#, "RS256"), None);
    assert_eq!(ok(r#""alg": "RS256", "audience": ["other", "sluice"]"#, "RS256"), None);
    assert_eq!(ok(r#""alg": "RS256", "audience": ["sluice", "third"]"#, "RS256"), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(ok(r#""alg": "RS256", "audience": ["sluice"]"#, "RS256-aud-string"), None);
    assert_eq!(ok(r#""alg": "RS256", "audience": ["sluice"]"#, "RS256-minimal"), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(ok(r#""alg": "RS256", "audience": ["sluice"]"#, "RS256-other-aud"), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn roles_and_scopes_answer_403() {
    let status = |fields: &str, name: &str| check(&validator(fields), &bearer(&token(name))).err();
    let forbidden = Some(StatusCode::FORBIDDEN);
    assert_eq!(status(r#""alg": "RS256", "roles": ["admin", "root"]"#, "RS256"), None);
    assert_eq!(status(r#""alg": "RS256", "roles": ["root"]"#, "RS256"), forbidden);
    assert_eq!(status(r#""alg": "RS256", "roles": ["admin"]"#, "RS256-roles-string"), None);
    assert_eq!(status(r#""alg": "RS256", "roles": ["admin"]"#, "RS256-minimal"), forbidden);
    // Nested keys only when asked; a namespaced (URL) key is never split.
    let nested = r#""alg": "RS256", "roles_key": "realm_access.roles", "roles": ["editor"]"#;
    assert_eq!(status(&format!(r#"{nested}, "roles_key_is_nested": true"#), "RS256-nested-roles"), None);
    assert_eq!(status(nested, "RS256-nested-roles"), forbidden);
    assert_eq!(
        status(
            r#""alg": "RS256", "roles_key": "http://ns.example/role", "roles_key_is_nested": true, "roles": ["x"]"#,
            "RS256"
        ),
        None
    );
    // Scopes: a space-separated string or an array; any by default, or all.
    let scopes = |list: &str, matcher: &str, key: &str, name: &str| {
        status(
            &format!(r#""alg": "RS256", "scopes_key": "{key}", "scopes": {list}, "scopes_matcher": "{matcher}""#),
            name,
        )
    };
    assert_eq!(scopes(r#"["read", "delete"]"#, "any", "scope", "RS256"), None);
    assert_eq!(scopes(r#"["read", "delete"]"#, "all", "scope", "RS256"), forbidden);
    assert_eq!(scopes(r#"["read", "write"]"#, "all", "scope", "RS256"), None);
    assert_eq!(scopes(r#"["write"]"#, "all", "scp", "RS256-nested-roles"), None);
    assert_eq!(scopes(r#"["admin"]"#, "any", "scope", "RS256"), forbidden);
    assert_eq!(scopes(r#"["read"]"#, "any", "scope", "RS256-minimal"), forbidden);
    // Roles are checked before scopes; a bad token is 401 before either.
    assert_eq!(status(r#""alg": "RS256", "roles": ["root"]"#, "RS256-bad-signature"), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn where_the_token_is_read_from() {
    let v = validator(r#""alg": "RS256""#);
    let t = token("RS256");
    let passes = |head: Head| check(&v, &head).is_ok();
    assert!(passes(Head::from_fields([("authorization", format!("bearer {t}").as_bytes())])));
    assert!(passes(Head::from_fields([("Authorization", format!("BEARER   {t}").as_bytes())])));
    assert!(passes(Head::from_fields([("Authorization", t.as_bytes())])), "a bare token");
    assert!(!passes(Head::from_fields([("Authorization", format!("Basic {t}").as_bytes())])));
    // The cookie, only without the header.
    assert!(passes(Head::from_fields([("Cookie", format!("a=b; access_token={t}; c=d").as_bytes())])));
    assert!(!passes(Head::from_fields([
        ("Authorization", b"Bearer nope".as_slice()),
        ("Cookie", format!("access_token={t}").as_bytes()),
    ])));
    assert!(!passes(Head::from_fields([("Cookie", format!("session={t}").as_bytes())])));
    assert!(!passes(Head::default()));
    let v = validator(r#""alg": "RS256", "cookie_key": "session", "auth_header_name": "X-Token""#);
    assert!(check(&v, &Head::from_fields([("Cookie", format!("session={t}").as_bytes())])).is_ok());
    assert!(check(&v, &Head::from_fields([("X-Token", t.as_bytes())])).is_ok());
    assert!(check(&v, &bearer(&t)).is_err());
}

#[test]
fn claims_propagate_as_krakend_writes_them() {
    let v = validator(
        r#""alg": "RS256", "propagate_claims": [["sub", "X-User"], ["tenant.id", "x-tenant"], ["level", "X-Level"],
            ["ratio", "X-Ratio"], ["big", "X-Big"], ["groups", "X-Groups"], ["flag", "X-Flag"], ["tenant", "X-T"],
            ["missing", "X-Missing"], ["http://ns.example/role", "X-Ns"], ["aud", "X-Aud"]]"#,
    );
    let got = check(&v, &bearer(&token("RS256"))).unwrap();
    let headers: Vec<(&str, &str)> = got.headers.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
    assert_eq!(
        headers,
        [
            ("x-user", "1234567890"),
            ("x-tenant", "t-7"),
            ("x-level", "3"),
            ("x-ratio", "1.500000"),
            ("x-big", "1700000000.500000"),
            ("x-groups", "a,b,1.7e+09"),
            ("x-flag", "true"),
            ("x-t", r#"{"id":"t-7","tier":2}"#),
            ("x-missing", ""),
            ("x-ns", "x"),
            ("x-aud", "sluice,other"),
        ]
    );
    let v = validator(
        r#""alg": "RS256", "propagate_claims": [["groups", "X-Groups"]], "propagate_claims_preserve_array": true"#,
    );
    let got = check(&v, &bearer(&token("RS256"))).unwrap();
    let values: Vec<&str> = got.headers.iter().map(|(_, v)| v.to_str().unwrap()).collect();
    assert_eq!(values, ["a", "b", "1.7e+09"]);
    // A preserved empty array gives no value, and the client's header is still
    // replaced (the names are what the backends' writer drops).
    let empty = check(&v, &bearer(&token("RS256-empty-groups"))).unwrap();
    assert!(empty.headers.is_empty());
    assert_eq!(empty.replaces, [http::HeaderName::from_static("x-groups")]);
    // {JWT.claim}: top-level claims, rendered the same way.
    assert_eq!(got.claim_text("sub").as_deref(), Some("1234567890"));
    assert_eq!(got.claim_text("groups").as_deref(), Some("a,b,1.7e+09"));
    assert_eq!(got.claim_text("tenant.id"), None);
    // A claim that cannot be a header value refuses the token, not the header's
    // neighbours.
    let v = validator(r#""alg": "RS256", "propagate_claims": [["name", "X-Name"]]"#);
    assert_eq!(check(&v, &bearer(&token("RS256-newline-claim"))).err(), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn key_sets_that_cannot_be_read() {
    for (set, why) in [
        ("nope", "not a JWK set"),
        (r#"{"keys": []}"#, "the JWK set has no keys"),
        (r#"{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}"#, "keys[0]"),
        (r#"{"keys": [{"kty": "XYZ"}]}"#, "keys[0]"),
        (r#"{"keys": [{"kty": "EC", "crv": "P-521", "x": "AAAA", "y": "AAAA"}]}"#, "keys[0]"),
    ] {
        let e = KeySet::parse(set.as_bytes()).expect_err(set);
        assert!(e.contains(why), "{set}: {e}");
    }
    assert_eq!(KeySet::parse(KEYS.as_bytes()).unwrap().len(), 6);
}

#[test]
fn keys_are_read_or_fetched_when_the_configuration_is_compiled() {
    use sluice_core::plan::Gateway;
    use sluice_core::tls::{Environment, FetchRequest};
    use std::sync::{Arc, Mutex};
    let config = |source: &str| {
        format!(
            r#"{{"version": 3, "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["http://b"], "url_pattern": "/"}}],
                "extra_config": {{"auth/validator": {{"alg": "RS256", {source}}}}}}}]}}"#
        )
    };
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let env = Environment {
        read_file: Box::new(|path| match path {
            "keys.json" => Ok(KEYS.as_bytes().to_vec()),
            "empty.json" => Ok(br#"{"keys": []}"#.to_vec()),
            other => Err(format!("cannot read {other:?}: no such file")),
        }),
        fetch: Box::new(move |req: &FetchRequest| {
            seen.lock().unwrap().push(req.clone());
            if req.url.ends_with("/down") { Err(format!("cannot fetch {}: refused", req.url)) } else { Ok(KEYS.into()) }
        }),
        ..Default::default()
    };
    let errors = |source: &str| match Gateway::load_with(&config(source), &env) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    assert_eq!(errors(r#""jwk_local_path": "keys.json""#), "");
    assert_eq!(
        errors(r#""jwk_local_path": "gone.json""#),
        r#"endpoints[0].extra_config["auth/validator"].jwk_local_path: cannot read "gone.json": no such file"#
    );
    assert_eq!(
        errors(r#""jwk_local_path": "empty.json""#),
        r#"endpoints[0].extra_config["auth/validator"].jwk_local_path: empty.json: the JWK set has no keys"#
    );
    assert_eq!(errors(r#""jwk_url": "https://idp.example/keys", "jwk_local_ca": "ca.pem""#), "");
    assert_eq!(
        errors(r#""jwk_url": "http://127.0.0.1:9/down", "disable_jwk_security": true"#),
        r#"endpoints[0].extra_config["auth/validator"].jwk_url: cannot fetch http://127.0.0.1:9/down: refused"#
    );
    assert_eq!(
        *asked.lock().unwrap(),
        [
            FetchRequest { url: "https://idp.example/keys".into(), ca: Some("ca.pem".into()), insecure: false },
            FetchRequest { url: "http://127.0.0.1:9/down".into(), ca: None, insecure: true },
        ]
    );
    // Without a fetcher (a library user's default): said, not served without keys.
    let e =
        Gateway::load_with(&config(r#""jwk_url": "https://idp.example/keys""#), &Environment::default()).unwrap_err();
    assert!(e.to_string().ends_with("cannot fetch https://idp.example/keys: no network access was given"), "{e}");
}

#[test]
fn a_fetched_set_is_due_again_on_its_period_or_for_an_unknown_key() {
    use sluice_core::tls::FetchRequest;
    use std::time::Instant;
    let request = FetchRequest { url: "https://idp.example/keys".into(), ca: None, insecure: false };
    let mut only_rsa: Value = serde_json::from_str(KEYS).unwrap();
    only_rsa["keys"].as_array_mut().unwrap().truncate(1);
    let source = KeySource::fetched(
        KeySet::parse(only_rsa.to_string().as_bytes()).unwrap(),
        request.clone(),
        Duration::from_secs(60),
        Duration::from_secs(10),
    );
    assert_eq!(source.request(), Some(&request));
    let text = r#"{"version": 3, "endpoints": [{"endpoint": "/a", "backend": [{"host": ["http://b"], "url_pattern": "/"}],
        "extra_config": {"auth/validator": {"alg": "ES256", "jwk_url": "https://idp.example/keys"}}}]}"#;
    let parsed = sluice_core::config::parse(text).unwrap();
    let v = Validator::compile(parsed.config.endpoints[0].jwt.as_ref().unwrap(), source.clone()).unwrap();
    let last = Instant::now();
    let after = |secs| last + Duration::from_secs(secs);
    assert!(!source.due(last, after(59)) && source.due(last, after(60)));
    // A token naming a key the set lacks: refused, and the set is due after the cooldown.
    assert!(!source.due(last, after(10)));
    assert_eq!(check(&v, &bearer(&token("ES256"))).err(), Some(StatusCode::UNAUTHORIZED));
    assert!(!source.due(last, after(9)) && source.due(last, after(10)));
    // The fetched set replaces it: the token passes, and nothing is wanted any more.
    source.replace(KeySet::parse(KEYS.as_bytes()).unwrap());
    assert_eq!(source.current().len(), 6);
    assert!(check(&v, &bearer(&token("ES256"))).is_ok());
    assert!(!source.due(last, after(10)));
    // A file's set is never due.
    let file = KeySource::fixed(KeySet::parse(KEYS.as_bytes()).unwrap());
    assert!(file.request().is_none() && !file.due(last, after(100_000)));
}
