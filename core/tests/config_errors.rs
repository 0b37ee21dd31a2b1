//! A table of broken configurations, each with the exact diagnostics it must produce.

use serde_json::{Value, json};
use sluice_core::{ConfigError, Gateway};

/// The diagnostics of a config, as `path: message` lines (empty when it loads).
fn errors(config: &Value) -> Vec<String> {
    match Gateway::load(&config.to_string()) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(diags)) => diags.iter().map(ToString::to_string).collect(),
        Err(other) => vec![format!("unexpected: {other}")],
    }
}

/// A config with one endpoint made of `endpoint` (merged over a valid default).
fn one(endpoint: Value) -> Value {
    let mut e = json!({"endpoint": "/a", "backend": [{"host": ["http://api:8000"], "url_pattern": "/x"}]});
    if let (Some(base), Value::Object(over)) = (e.as_object_mut(), endpoint) {
        base.extend(over);
    }
    json!({"version": 3, "endpoints": [e]})
}

/// A config with one endpoint and these backends.
fn backends(list: Value) -> Value {
    one(json!({"backend": list}))
}

#[test]
fn broken_configs_report_exact_paths_and_messages() {
    let table: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "version 2",
            json!({"version": 2, "endpoints": []}),
            vec![r#"version: unsupported version 2: Sluice reads KrakenD v3 files ("version": 3)"#],
        ),
        (
            "version missing",
            json!({"endpoints": []}),
            vec![r#"version: missing (required): Sluice reads KrakenD v3 files ("version": 3)"#],
        ),
        (
            "version as a string",
            json!({"version": "3"}),
            vec![r#"version: unsupported version a string: Sluice reads KrakenD v3 files ("version": 3)"#],
        ),
        ("root not an object", json!([1]), vec!["a configuration is a JSON object (KrakenD v3), found an array"]),
        (
            "endpoint without backend key",
            json!({"version": 3, "endpoints": [{"endpoint": "/a"}]}),
            vec!["endpoints[0].backend: missing: an endpoint needs at least one backend"],
        ),
        (
            "endpoint with an empty backend list",
            backends(json!([])),
            vec!["endpoints[0].backend: empty: an endpoint needs at least one backend"],
        ),
        (
            "missing url_pattern",
            backends(json!([{"host": ["http://api"]}])),
            vec!["endpoints[0].backend[0].url_pattern: missing (required)"],
        ),
        (
            "missing endpoint path",
            json!({"version": 3, "endpoints": [{"backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]}),
            vec!["endpoints[0].endpoint: missing (required)"],
        ),
        (
            "undeclared parameter",
            one(json!({"endpoint": "/u/{id}", "backend": [{"host": ["http://api"], "url_pattern": "/users/{user}"}]})),
            vec![
                "endpoints[0].backend[0].url_pattern: {user} is not a parameter of the endpoint (the endpoint declares {id})",
            ],
        ),
        (
            "parameter in an endpoint without any",
            backends(json!([{"host": ["http://api"], "url_pattern": "/users/{id}"}])),
            vec![
                "endpoints[0].backend[0].url_pattern: {id} is not a parameter of the endpoint (the endpoint declares no parameters)",
            ],
        ),
        (
            "response placeholder without a sequential proxy",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/a"},
                {"host": ["http://api"], "url_pattern": "/b/{resp0_id}"}
            ])),
            vec![
                "endpoints[0].backend[1].url_pattern: {resp0_id} needs a sequential proxy (extra_config.proxy.sequential: true)",
            ],
        ),
        (
            "response placeholder pointing forward",
            one(json!({"extra_config": {"proxy": {"sequential": true}}, "backend": [
                {"host": ["http://api"], "url_pattern": "/a/{resp1_id}"},
                {"host": ["http://api"], "url_pattern": "/b"}
            ]})),
            vec![
                "endpoints[0].backend[0].url_pattern: {resp1_id} refers to backend[1], which is not called before backend[0]",
            ],
        ),
        (
            "bad input header placeholder",
            backends(json!([{"host": ["http://api"], "url_pattern": "/a/{input_headers.X(Bad)}"}])),
            vec!["endpoints[0].backend[0].url_pattern: {input_headers.X(Bad)}: invalid header name"],
        ),
        (
            "host with a path",
            backends(json!([{"host": ["http://ok", "http://api/v1"], "url_pattern": "/x"}])),
            vec![
                r#"endpoints[0].backend[0].host[1]: a host must not have a path ("/v1" in "http://api/v1"): put it in url_pattern"#,
            ],
        ),
        (
            "host with a bad scheme",
            backends(json!([{"host": ["ftp://api"], "url_pattern": "/x"}])),
            vec![
                r#"endpoints[0].backend[0].host[0]: unsupported scheme "ftp" in "ftp://api" (use http:// or https://, or set disable_host_sanitize)"#,
            ],
        ),
        (
            "host with a bad port",
            backends(json!([{"host": ["http://api:http"], "url_pattern": "/x"}])),
            vec![r#"endpoints[0].backend[0].host[0]: invalid port "http" in host "http://api:http" (1 to 65535)"#],
        ),
        (
            "root host with a bad port",
            json!({"version": 3, "host": ["http://api:0"], "endpoints": []}),
            vec![r#"host[0]: invalid port "0" in host "http://api:0" (1 to 65535)"#],
        ),
        (
            "host credentials are redacted",
            backends(json!([{"host": ["http://user:hunter2@api"], "url_pattern": "/x"}])),
            vec![r#"endpoints[0].backend[0].host[0]: a host must not carry credentials ("http://***@api")"#],
        ),
        (
            "no host at all",
            backends(json!([{"url_pattern": "/x"}])),
            vec![r#"endpoints[0].backend[0].host: no host for this backend, and no root-level "host" to fall back on"#],
        ),
        (
            "host is not a list",
            backends(json!([{"host": "http://api", "url_pattern": "/x"}])),
            vec!["endpoints[0].backend[0].host: expected an array of strings, found a string"],
        ),
        (
            "unknown backend encoding",
            backends(json!([{"host": ["http://api"], "url_pattern": "/x", "encoding": "yaml"}])),
            vec![
                r#"endpoints[0].backend[0].encoding: unknown value "yaml", expected one of "json", "safejson", "fast-json", "xml", "rss", "string", "no-op""#,
            ],
        ),
        (
            "unknown output encoding",
            one(json!({"output_encoding": "protobuf"})),
            vec![
                r#"endpoints[0].output_encoding: unknown value "protobuf", expected one of "json", "json-collection", "string", "xml", "yaml", "negotiate", "no-op""#,
            ],
        ),
        (
            "invalid durations",
            json!({"version": 3, "timeout": "3", "cache_ttl": 300, "max_shutdown_wait_time": "soon", "endpoints": [
                {"endpoint": "/a", "timeout": "1 minute", "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}
            ]}),
            vec![
                r#"timeout: missing unit in duration "3" (for example "3s")"#,
                r#"cache_ttl: expected a duration string such as "2s", found a number"#,
                r#"max_shutdown_wait_time: invalid duration "soon" (use Go syntax: "2s", "150ms", "1m30s")"#,
                r#"endpoints[0].timeout: unknown unit " minute" in duration "1 minute""#,
            ],
        ),
        ("zero timeout", one(json!({"timeout": "0s"})), vec!["endpoints[0].timeout: must be greater than 0"]),
        (
            "no-op with two backends",
            one(json!({"output_encoding": "no-op", "backend": [
                {"host": ["http://api"], "url_pattern": "/x", "encoding": "no-op"},
                {"host": ["http://api"], "url_pattern": "/y", "encoding": "no-op"}
            ]})),
            vec![r#"endpoints[0].output_encoding: "no-op" passes one backend through; this endpoint has 2"#],
        ),
        (
            "duplicate route",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/a", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/b", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/a", "backend": [{"url_pattern": "/y"}]}
            ]}),
            vec!["endpoints[2].endpoint: duplicate route GET /a: endpoints[0] declares it too"],
        ),
        (
            "conflicting parameter names",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/u/{id}", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/u/{name}", "backend": [{"url_pattern": "/x"}]}
            ]}),
            vec!["endpoints[1].endpoint: route GET /u/{name} conflicts with /u/{id} (endpoints[0])"],
        ),
        (
            "more parameters than the router takes (it panicked at 26)",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": many_params(26), "backend": [{"url_pattern": "/x"}]},
                {"endpoint": format!("/b{}", many_params(25)), "backend": [{"url_pattern": "/x"}]},
                {"endpoint": format!("/c{}", many_params(40)), "method": "POST", "backend": [{"url_pattern": "/x"}]}
            ]}),
            vec![
                &*format!(
                    "endpoints[0].endpoint: route GET {} has 26 parameters: at most 25 are supported",
                    many_params(26)
                )
                .leak(),
                &*format!(
                    "endpoints[2].endpoint: route POST /c{} has 40 parameters: at most 25 are supported",
                    many_params(40)
                )
                .leak(),
            ],
        ),
        (
            "service discovery the gateway does not implement",
            backends(json!([
                {"host": ["users.service.consul"], "url_pattern": "/x", "sd": "dns", "disable_host_sanitize": true},
                {"host": ["http://api"], "url_pattern": "/y", "sd": "static"},
                {"host": ["http://api"], "url_pattern": "/z", "sd": "eureka"}
            ])),
            vec![r#"endpoints[0].backend[2].sd: unknown value "eureka", expected "static" or "dns""#],
        ),
        (
            "reserved paths",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/__health", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/__debug/x", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/__echo/{id}", "backend": [{"url_pattern": "/x"}]}
            ]}),
            vec![
                r#"endpoints[0].endpoint: "/__health" is under /__health, which the gateway serves itself"#,
                r#"endpoints[1].endpoint: "/__debug/x" is under /__debug, which the gateway serves itself"#,
                r#"endpoints[2].endpoint: "/__echo/{id}" is under /__echo, which the gateway serves itself"#,
            ],
        ),
        (
            "two write backends",
            one(json!({"extra_config": {"proxy": {"sequential": true}}, "backend": [
                {"host": ["http://api"], "url_pattern": "/a", "method": "POST"},
                {"host": ["http://api"], "url_pattern": "/b"},
                {"host": ["http://api"], "url_pattern": "/c", "method": "DELETE"}
            ]})),
            vec![
                "endpoints[0].backend: at most one backend may use a write method; found 2: backend[0] POST, backend[2] DELETE",
            ],
        ),
        (
            "write backend not last",
            one(json!({"extra_config": {"proxy": {"sequential": true}}, "backend": [
                {"host": ["http://api"], "url_pattern": "/a", "method": "PUT"},
                {"host": ["http://api"], "url_pattern": "/b"}
            ]})),
            vec![
                "endpoints[0].backend[0]: uses PUT: a write backend must be the last one of a sequential proxy (extra_config.proxy.sequential: true)",
            ],
        ),
        (
            "write backend last but parallel",
            one(json!({"backend": [
                {"host": ["http://api"], "url_pattern": "/a"},
                {"host": ["http://api"], "url_pattern": "/b", "method": "PATCH"}
            ]})),
            vec![
                "endpoints[0].backend[1]: uses PATCH: a write backend must be the last one of a sequential proxy (extra_config.proxy.sequential: true)",
            ],
        ),
        (
            "endpoint method counts for backends without one",
            one(json!({"method": "POST", "backend": [
                {"host": ["http://api"], "url_pattern": "/a"},
                {"host": ["http://api"], "url_pattern": "/b"}
            ]})),
            vec![
                "endpoints[0].backend: at most one backend may use a write method; found 2: backend[0] POST, backend[1] POST",
            ],
        ),
        (
            "parameter inside a segment",
            one(json!({"endpoint": "/file.{ext}", "backend": [{"host": ["http://api"], "url_pattern": "/f/{ext}"}]})),
            vec![
                r#"endpoints[0].endpoint: {ext} must fill a whole path segment (set "disable_rest": true to allow it inside one)"#,
            ],
        ),
        (
            "url_pattern parameter inside a segment",
            one(
                json!({"endpoint": "/f/{ext}", "backend": [{"host": ["http://api"], "url_pattern": "/file.{ext}.json"}]}),
            ),
            vec![
                r#"endpoints[0].backend[0].url_pattern: {ext} must start a path segment, right after "/" (KrakenD would send it as written; set "disable_rest": true to allow it anywhere)"#,
            ],
        ),
        (
            "bad endpoint paths",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "a", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/a/{id", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/a/{*rest}", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/a/{id}/{id}", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/a?x=1", "backend": [{"url_pattern": "/x"}]}
            ]}),
            vec![
                r#"endpoints[0].endpoint: "a" must start with "/""#,
                r#"endpoints[1].endpoint: unclosed "{" in "/a/{id""#,
                r#"endpoints[2].endpoint: invalid parameter name {*rest} (letters, digits, "_" and "-")"#,
                "endpoints[3].endpoint: parameter {id} appears twice",
                r##"endpoints[4].endpoint: "/a?x=1" must not contain "?" or "#""##,
            ],
        ),
        (
            "url_pattern not starting with a slash, with a space",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "x"},
                {"host": ["http://api"], "url_pattern": "/a b"}
            ])),
            vec![
                r#"endpoints[0].backend[0].url_pattern: "x" must start with "/""#,
                r##"endpoints[0].backend[1].url_pattern: "/a b" must not contain "#", spaces or control characters"##,
            ],
        ),
        (
            "methods",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/a", "method": "get", "backend": [{"url_pattern": "/x"}]},
                {"endpoint": "/b", "method": "TRACE", "backend": [{"url_pattern": "/x"}]}
            ]}),
            vec![
                r#"endpoints[0].method: method "get" must be written in uppercase ("GET")"#,
                r#"endpoints[1].method: unsupported method "TRACE" (one of GET, POST, PUT, PATCH, DELETE)"#,
            ],
        ),
        (
            "type errors",
            json!({"version": 3, "port": "8080", "debug_endpoint": "yes", "endpoints": {}}),
            vec![
                "port: expected a whole number from 0 to 65535, found a string",
                r#"debug_endpoint: invalid type: string "yes", expected a boolean"#,
                "endpoints: expected an array, found an object",
            ],
        ),
        (
            "port out of range and header limit too small",
            json!({"version": 3, "port": 70000, "max_header_bytes": 10}),
            vec![
                "port: expected a whole number from 0 to 65535, found 70000",
                "max_header_bytes: expected a whole number from 1024 to 16777216, found 10",
            ],
        ),
        (
            "backend that is not an object",
            backends(json!(["http://api/x"])),
            vec!["endpoints[0].backend[0]: expected an object, found a string"],
        ),
        (
            "auth/validator: what it cannot check is refused",
            json!({"version": 3, "endpoints": [
                {"endpoint": "/a", "extra_config": {"auth/validator": {"jwk_url": "https://idp/keys"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/b", "extra_config": {"auth/validator": {"alg": "none"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/c", "extra_config": {"auth/validator": {"alg": "RS256", "jwk_url": "http://idp/keys",
                    "leeway": 5, "scopes": ["read"], "scopes_matcher": "most", "key_identify_strategy": "x5t#S256",
                    "propagate_claims": [["sub"], ["sub", "X User"], ["sub", "Connection"], ["sub", "X-Forwarded-For"]], "jwk_fingerprints": ["abc"],
                    "secret_url": "base64key://x", "auth_header_name": "Bad Name"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/d", "backend": [{"host": ["http://api"], "url_pattern": "/u/{JWT.sub}"}]},
                {"endpoint": "/e", "extra_config": {"auth/validator": {"alg": "HS256", "jwk_url": "ftp://idp/keys"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]}),
            vec![
                r#"endpoints[0].extra_config["auth/validator"].alg: missing (required)"#,
                r#"endpoints[1].extra_config["auth/validator"].alg: "none" is not an algorithm KrakenD validates: EdDSA, HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512"#,
                r#"endpoints[1].extra_config["auth/validator"]: no keys: give jwk_url or jwk_local_path"#,
                r#"endpoints[2].extra_config["auth/validator"].jwk_url: not https: set disable_jwk_security to fetch keys over plain HTTP"#,
                r#"endpoints[2].extra_config["auth/validator"].key_identify_strategy: "x5t#S256" is not a strategy Sluice knows: "kid", "x5t" or "kid_x5t""#,
                r#"endpoints[2].extra_config["auth/validator"].auth_header_name: "Bad Name" is not a header name"#,
                r#"endpoints[2].extra_config["auth/validator"].leeway: expected a duration string such as "2s", found a number"#,
                r#"endpoints[2].extra_config["auth/validator"].scopes_key: missing: scopes needs the claim that holds them"#,
                r#"endpoints[2].extra_config["auth/validator"].scopes_matcher: "most" is not a matcher: "any" or "all""#,
                r#"endpoints[2].extra_config["auth/validator"].propagate_claims[0]: expected ["claim", "Header-Name"]"#,
                r#"endpoints[2].extra_config["auth/validator"].propagate_claims[1][1]: "X User" is not a header name"#,
                r#"endpoints[2].extra_config["auth/validator"].propagate_claims[2][1]: "Connection" is set by the gateway or ends at it: it cannot carry a claim"#,
                r#"endpoints[2].extra_config["auth/validator"].propagate_claims[3][1]: "X-Forwarded-For" is set by the gateway or ends at it: it cannot carry a claim"#,
                r#"endpoints[2].extra_config["auth/validator"].jwk_fingerprints: not supported by Sluice (certificate pinning of the key set's server): refusing to serve without it; remove it to run without it"#,
                r#"endpoints[2].extra_config["auth/validator"].secret_url: not supported by Sluice (an encrypted key file): refusing to serve without it; remove it to run without it"#,
                r#"endpoints[3].backend[0].url_pattern: {JWT.sub} needs the endpoint's auth/validator (a token to read)"#,
                r#"endpoints[4].extra_config["auth/validator"].jwk_url: "ftp://idp/keys" is not an http(s) URL"#,
            ],
        ),
        (
            "every namespace that enforces or changes what is served is refused, at every level",
            json!({"version": 3, "extra_config": {"security/http-secure": {"ssl_redirect": true}, "telemetry/metrics": {}},
                "endpoints": [{"endpoint": "/a", "extra_config": {
                    "qos/ratelimit/proxy": {"max_rate": 5},
                    "security/http-secure": {}, "modifier/martian": {}, "plugin/req-resp-modifier": {},
                    "governance/quota": {}, "websocket": {}},
                  "backend": [{"host": ["http://api"], "url_pattern": "/x", "extra_config": {
                    "qos/http-cache": {}, "backend/grpc": {}, "modifier/lua-backend": {},
                    "documentation/openapi": {}}}]}]}),
            vec![
                r#"extra_config["security/http-secure"]: not supported by Sluice (a security policy (CORS, bot detection, HTTP security headers, ...)): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].extra_config["qos/ratelimit/proxy"]: not supported by Sluice (rate limits, circuit breakers or caching): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].extra_config["security/http-secure"]: not supported by Sluice (a security policy (CORS, bot detection, HTTP security headers, ...)): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].extra_config["modifier/martian"]: not supported by Sluice (request or response modification): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].extra_config["plugin/req-resp-modifier"]: not supported by Sluice (a plugin stage Sluice does not run): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].extra_config["governance/quota"]: not supported by Sluice (quotas): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].extra_config.websocket: not supported by Sluice (WebSockets): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].backend[0].extra_config["qos/http-cache"]: not supported by Sluice (rate limits, circuit breakers or caching): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].backend[0].extra_config["backend/grpc"]: not supported by Sluice (a backend type other than HTTP): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].backend[0].extra_config["modifier/lua-backend"]: not supported by Sluice (request or response modification): refusing to serve without it; remove the namespace to run without it (README, "What Sluice refuses")"#,
            ],
        ),
        (
            "security/cors with bad fields",
            json!({"version": 3, "extra_config": {"security/cors": {
                    "allow_origins": ["https://app.example", "", 7], "allow_methods": ["GET", "BAD METHOD"],
                    "allow_headers": ["Content-Type", "bad header"], "expose_headers": "X-Id",
                    "allow_credentials": "yes", "options_success_status": 99, "max_age": 43200,
                    "allow_origin": ["*"]}},
                "endpoints": [{"endpoint": "/a", "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]}),
            vec![
                r#"extra_config["security/cors"].allow_origins[2]: invalid type: integer "7", expected a string"#,
                r#"extra_config["security/cors"].allow_origins[1]: "" is not an origin (scheme://host[:port]) or "*""#,
                r#"extra_config["security/cors"].allow_methods[1]: "BAD METHOD" is not a method"#,
                r#"extra_config["security/cors"].expose_headers: expected an array of strings, found a string"#,
                r#"extra_config["security/cors"].allow_headers[1]: "bad header" is not a header name"#,
                r#"extra_config["security/cors"].allow_credentials: invalid type: string "yes", expected a boolean"#,
                r#"extra_config["security/cors"].options_success_status: expected a whole number from 200 to 299, found 99"#,
                r#"extra_config["security/cors"].max_age: expected a duration string such as "2s", found a number"#,
            ],
        ),
        (
            "security/bot-detector with bad fields, at the root and on an endpoint",
            json!({"version": 3, "extra_config": {"security/bot-detector": {"patterns": ["ok", "(unclosed"], "cache_size": -1}},
                "endpoints": [{"endpoint": "/a", "extra_config": {"security/bot-detector": {
                    "allow": "curl", "deny": [3], "empty_user_agent_is_bot": 1}},
                  "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]}),
            vec![
                r#"extra_config["security/bot-detector"].patterns[1]: "(unclosed" is not a regular expression: error: unclosed group"#,
                r#"extra_config["security/bot-detector"].cache_size: expected a whole number from 0 to 4294967295, found -1"#,
                r#"endpoints[0].extra_config["security/bot-detector"].allow: expected an array of strings, found a string"#,
                r#"endpoints[0].extra_config["security/bot-detector"].deny[0]: invalid type: integer "3", expected a string"#,
                r#"endpoints[0].extra_config["security/bot-detector"].empty_user_agent_is_bot: invalid type: integer "1", expected a boolean"#,
            ],
        ),
        (
            "qos/ratelimit/router with bad fields",
            json!({"version": 3, "endpoints": [
                {"endpoint": "/a/{id}", "extra_config": {"qos/ratelimit/router": {
                    "max_rate": -1, "client_max_rate": "10", "capacity": 1.5, "strategy": "cookie", "every": 60}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/b/{id}", "extra_config": {"qos/ratelimit/router": {
                    "client_max_rate": 10, "strategy": "param", "key": "user"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/c", "extra_config": {"qos/ratelimit/router": {"client_max_rate": 10, "strategy": "header"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/d", "extra_config": {"qos/ratelimit/router": {"client_max_rate": 10}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/e", "extra_config": {"qos/ratelimit/router": {"every": "1m"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/f", "extra_config": {"qos/ratelimit/router": {"client_max_rate": 1, "strategy": ""}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/g", "extra_config": {"qos/ratelimit/router": {"client_max_rate": 1, "strategy": null}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/h", "extra_config": {"qos/ratelimit/router": {
                    "client_max_rate": 1, "client_capacity": 10, "every": "2400h", "strategy": "ip"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]}),
            vec![
                r#"endpoints[0].extra_config["qos/ratelimit/router"].max_rate: expected a number of requests, 0 or more, found a number"#,
                r#"endpoints[0].extra_config["qos/ratelimit/router"].client_max_rate: expected a number of requests, 0 or more, found a string"#,
                r#"endpoints[0].extra_config["qos/ratelimit/router"].capacity: expected a whole number from 0 to 4294967295, found 1.5"#,
                r#"endpoints[0].extra_config["qos/ratelimit/router"].every: expected a duration string such as "2s", found a number"#,
                r#"endpoints[0].extra_config["qos/ratelimit/router"].strategy: "cookie" is not a strategy: "ip", "header" or "param""#,
                r#"endpoints[0].extra_config["qos/ratelimit/router"]: sets no limit: give max_rate or client_max_rate"#,
                r#"endpoints[1].extra_config["qos/ratelimit/router"].key: the endpoint's path has no {user} parameter"#,
                r#"endpoints[2].extra_config["qos/ratelimit/router"].key: missing: strategy "header" needs the name of the header to tell clients apart"#,
                r#"endpoints[3].extra_config["qos/ratelimit/router"].strategy: missing: client_max_rate needs a strategy ("ip", "header" or "param")"#,
                r#"endpoints[4].extra_config["qos/ratelimit/router"]: sets no limit: give max_rate or client_max_rate"#,
                r#"endpoints[5].extra_config["qos/ratelimit/router"].strategy: missing: client_max_rate needs a strategy ("ip", "header" or "param")"#,
                r#"endpoints[6].extra_config["qos/ratelimit/router"].strategy: missing: client_max_rate needs a strategy ("ip", "header" or "param")"#,
                r#"endpoints[7].extra_config["qos/ratelimit/router"].client_max_rate: a client's bucket would take more than two years to refill: raise client_max_rate or lower client_capacity"#,
            ],
        ),
        (
            "qos/ratelimit/proxy with bad fields",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/x", "extra_config": {"qos/ratelimit/proxy": {
                    "max_rate": "5", "capacity": -2, "every": "0s"}}},
                {"host": ["http://api"], "url_pattern": "/y", "extra_config": {"qos/ratelimit/proxy": {"capacity": 5}}}])),
            vec![
                r#"endpoints[0].backend[0].extra_config["qos/ratelimit/proxy"].max_rate: expected a number of requests, 0 or more, found a string"#,
                r#"endpoints[0].backend[0].extra_config["qos/ratelimit/proxy"].capacity: expected a whole number from 0 to 4294967295, found -2"#,
                r#"endpoints[0].backend[0].extra_config["qos/ratelimit/proxy"].every: must be greater than 0"#,
                r#"endpoints[0].backend[0].extra_config["qos/ratelimit/proxy"]: sets no limit: give max_rate"#,
                r#"endpoints[0].backend[1].extra_config["qos/ratelimit/proxy"]: sets no limit: give max_rate"#,
            ],
        ),
        (
            "validation/json-schema that does not compile, or on a no-op endpoint",
            json!({"version": 3, "endpoints": [
                {"endpoint": "/a", "method": "POST", "extra_config": {"validation/json-schema": {"type": 5}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/b", "method": "POST", "output_encoding": "no-op",
                 "extra_config": {"validation/json-schema": {"type": "object"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x", "encoding": "no-op"}]}]}),
            vec![
                r#"endpoints[0].extra_config["validation/json-schema"]: not a JSON schema: 5 is not valid under any of the schemas listed in the 'anyOf' keyword"#,
                r#"endpoints[1].extra_config["validation/json-schema"]: a no-op endpoint streams the request body to its backend; the schema needs it whole: use another output_encoding, or validate in the backend"#,
            ],
        ),
        (
            "validation/cel that is not a list, does not parse, or checks what is not served yet",
            json!({"version": 3, "endpoints": [
                {"endpoint": "/a", "extra_config": {"validation/cel": {"check_expr": "req_method == 'GET'"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/b", "extra_config": {"validation/cel": [{"check_expr": "req_method == 'GET'"}, {"check_expr": "req_method =="}]},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x", "extra_config": {"validation/cel": [
                    {"check_expr": "true"}, {"expr": "x"}]}}]}]}),
            vec![
                r#"endpoints[0].extra_config["validation/cel"]: expected an array of {"check_expr": ...}, found an object"#,
                r#"endpoints[1].extra_config["validation/cel"][1].check_expr: does not parse: ERROR: <input>:1:14: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}"#,
                r#"endpoints[1].backend[0].extra_config["validation/cel"][1].check_expr: missing (required)"#,
                r#"endpoints[1].backend[0].extra_config["validation/cel"][0].check_expr: not supported by Sluice: an expression with no req_, resp_ or JWT variable (KrakenD never evaluates it)"#,
            ],
        ),
        (
            "validation/cel token checks: only beside auth/validator, on the endpoint, alone in their phase",
            json!({"version": 3, "endpoints": [
                {"endpoint": "/a", "extra_config": {"validation/cel": [{"check_expr": "JWT.sub == 'a'"}]},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x", "extra_config": {"validation/cel": [
                    {"check_expr": "req_method == 'GET'"}, {"check_expr": "has(JWT.sub)"}]}}]},
                {"endpoint": "/b", "extra_config": {
                    "validation/cel": [{"check_expr": "JWT.sub != ''"}, {"check_expr": "JWT.sub == req_params.Id"},
                        {"check_expr": "req_method == 'GET' && now != ''"}],
                    "auth/validator": {"alg": "HS256", "jwk_local_path": "keys.json"}},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]}),
            vec![
                r#"endpoints[0].extra_config["validation/cel"][0].check_expr: not supported by Sluice: a token check (JWT) on an endpoint without auth/validator: KrakenD never evaluates it"#,
                r#"endpoints[0].backend[0].extra_config["validation/cel"][1].check_expr: not supported by Sluice: a token check (JWT) on a backend: KrakenD runs only the endpoint's"#,
                r#"endpoints[1].extra_config["validation/cel"][1].check_expr: not supported by Sluice: an expression naming two of req, resp and JWT: KrakenD evaluates it in each of those phases, each without the others' variables, so it refuses every request; split it"#,
            ],
        ),
        (
            "validation/cel response checks: not where the answer is streamed",
            json!({"version": 3, "endpoints": [
                {"endpoint": "/a", "output_encoding": "no-op", "extra_config": {"validation/cel": [{"check_expr": "resp_data.ok"}]},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x"}]},
                {"endpoint": "/b", "extra_config": {"validation/cel": [{"check_expr": "resp_completed && timestamp(now) > timestamp('2020-01-01T00:00:00Z')"}]},
                 "backend": [{"host": ["http://api"], "url_pattern": "/x", "encoding": "no-op",
                    "extra_config": {"validation/cel": [{"check_expr": "resp_metadata_status == 200"}]}}]}]}),
            vec![
                r#"endpoints[0].extra_config["validation/cel"][0].check_expr: not supported by Sluice: a response check (resp_...) where the answer is streamed (a no-op endpoint or backend): it would hold the answer back"#,
                r#"endpoints[1].backend[0].extra_config["validation/cel"][0].check_expr: not supported by Sluice: a response check (resp_...) where the answer is streamed (a no-op endpoint or backend): it would hold the answer back"#,
            ],
        ),
        (
            "http-proxy plugin without an address",
            backends(json!([{"host": ["http://api"], "url_pattern": "/x",
                "extra_config": {"plugin/http-client": {"name": "http-proxy"}}}])),
            vec![
                r#"endpoints[0].backend[0].extra_config["plugin/http-client"].proxy_address: missing: the http-proxy plugin needs a proxy_address"#,
            ],
        ),
        (
            "proxy addresses need scheme and port",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/x",
                 "extra_config": {"backend/http/client": {"proxy_address": "proxy.corp"}}},
                {"host": ["http://api"], "url_pattern": "/y",
                 "extra_config": {"backend/http/client": {"proxy_address": "http://user:pw@proxy.corp"}}},
                {"host": ["http://api"], "url_pattern": "/z",
                 "extra_config": {"plugin/http-client": {"name": "http-proxy", "proxy_address": "socks5://p:1080"}}}
            ])),
            vec![
                r#"endpoints[0].backend[0].extra_config["backend/http/client"].proxy_address: "proxy.corp" must contain the protocol and the port ("http://proxy:3128")"#,
                r#"endpoints[0].backend[1].extra_config["backend/http/client"].proxy_address: "http://***@proxy.corp" must contain the port ("http://proxy:3128")"#,
                r#"endpoints[0].backend[2].extra_config["plugin/http-client"].proxy_address: unsupported proxy scheme "socks5" (http or https)"#,
            ],
        ),
        (
            "one proxy per backend, reached over plain HTTP",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/x",
                 "extra_config": {"backend/http/client": {"proxy_address": "http://a:3128"},
                                  "plugin/http-client": {"name": "http-proxy", "proxy_address": "http://b:3128"}}},
                {"host": ["http://api"], "url_pattern": "/y",
                 "extra_config": {"backend/http/client": {"proxy_address": "https://u:pw@proxy.corp:443"}}}
            ])),
            vec![
                r#"endpoints[0].backend[0].extra_config: two proxies for one backend: "backend/http/client".proxy_address and the http-proxy plugin; keep one"#,
                r#"endpoints[0].backend[1].extra_config["backend/http/client"].proxy_address: "https://***@proxy.corp:443": proxies reached over TLS (https://) are not supported yet; use an http:// proxy"#,
            ],
        ),
        (
            "plugin upstreams: names to URLs",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/x",
                 "extra_config": {"plugin/http-client": {"name": "auth", "upstreams": ["http://a:1"]}}},
                {"host": ["http://api"], "url_pattern": "/y",
                 "extra_config": {"plugin/http-client": {"name": "auth", "upstreams": {
                     "a": "ftp://a:1", "b": [], "c": ["http://c:1", 5], "d": "http://d:1/path", "e": "http://e:1"}}}},
                {"host": ["http://api"], "url_pattern": "/z",
                 "extra_config": {"plugin/http-client": {"name": "http-proxy", "proxy_address": "http://p:3128",
                     "upstreams": {"a": "http://a:1"}}}}
            ])),
            vec![
                r#"endpoints[0].backend[0].extra_config["plugin/http-client"].upstreams: must be an object of upstream names to URLs"#,
                r#"endpoints[0].backend[1].extra_config["plugin/http-client"].upstreams.b: must be a URL or a non-empty list of URLs"#,
                r#"endpoints[0].backend[1].extra_config["plugin/http-client"].upstreams.c: must be a URL or a list of URLs"#,
                r#"endpoints[0].backend[2].extra_config["plugin/http-client"].upstreams: the built-in http-proxy plugin makes no calls out"#,
            ],
        ),
        (
            "plugin upstreams: URLs as backend hosts",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/y",
                 "extra_config": {"plugin/http-client": {"name": "auth", "upstreams": {
                     "a": "ftp://a:1", "d": "http://d:1/path", "e": ["http://e:1", "http://e:99999"]}}}}
            ])),
            vec![
                r#"endpoints[0].backend[0].extra_config["plugin/http-client"].upstreams.a: unsupported scheme "ftp" in "ftp://a:1" (use http:// or https://)"#,
                r#"endpoints[0].backend[0].extra_config["plugin/http-client"].upstreams.d: a host must not have a path ("/path" in "http://d:1/path"): the call out's :path gives it"#,
                r#"endpoints[0].backend[0].extra_config["plugin/http-client"].upstreams.e[1]: invalid port "99999" in host "http://e:99999" (1 to 65535)"#,
            ],
        ),
        (
            "plugin without a name",
            backends(json!([{"host": ["http://api"], "url_pattern": "/x",
                "extra_config": {"plugin/http-client": {"path": "/p"}}}])),
            vec![r#"endpoints[0].backend[0].extra_config["plugin/http-client"].name: missing (required)"#],
        ),
        (
            "router options",
            json!({"version": 3, "extra_config": {"router": {"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/40", "proxy"]}}}),
            vec![
                r#"extra_config.router.trusted_proxies[1]: invalid prefix length "40" in "10.0.0.0/40" (0 to 32)"#,
                r#"extra_config.router.trusted_proxies[2]: invalid IP address "proxy""#,
            ],
        ),
        (
            "proxy keys that change the answer, not implemented yet",
            one(json!({"extra_config": {"proxy": {"combiner": "custom"}},
                "backend": [{"host": ["http://api"], "url_pattern": "/x", "extra_config": {"proxy": {"shadow": true}}},
                            {"host": ["http://api"], "url_pattern": "/y", "extra_config": {"proxy": {"shadow": false}}}]})),
            vec![
                r#"endpoints[0].extra_config.proxy.combiner: not supported by Sluice yet (a custom way of merging backends): refusing to serve without it; remove it to run without it (README, "What Sluice refuses")"#,
                r#"endpoints[0].backend[0].extra_config.proxy.shadow: not supported by Sluice yet (a shadow backend, called and its answer discarded; here it would be merged): refusing to serve without it; remove it to run without it (README, "What Sluice refuses")"#,
            ],
        ),
        (
            "static data",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/a", "backend": [{"url_pattern": "/x"}],
                 "extra_config": {"proxy": {"static": {"strategy": "sometimes", "data": {"a": 1}}}}},
                {"endpoint": "/b", "backend": [{"url_pattern": "/x"}],
                 "extra_config": {"proxy": {"static": {"strategy": "always"}}}},
                {"endpoint": "/c", "backend": [{"url_pattern": "/x"}],
                 "extra_config": {"proxy": {"static": {"data": [1]}}}},
                {"endpoint": "/d", "output_encoding": "no-op", "backend": [{"url_pattern": "/x"}],
                 "extra_config": {"proxy": {"static": {"data": {"a": 1}}}}}]}),
            vec![
                r#"endpoints[0].extra_config.proxy.static.strategy: unknown value "sometimes", expected one of "always", "success", "complete", "errored", "incomplete""#,
                r#"endpoints[1].extra_config.proxy.static.data: missing (required): the object merged into the answer"#,
                r#"endpoints[2].extra_config.proxy.static.data: expected an object (merged into the answer), found an array"#,
                r#"endpoints[3].extra_config.proxy.static: a no-op endpoint passes its backend's answer through; static data cannot be merged into it"#,
            ],
        ),
        (
            "flatmap filters",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/a", "backend": [{"url_pattern": "/x", "extra_config": {"proxy": {"flatmap_filter": [
                    {"type": "move", "args": ["a"]},
                    {"type": "rename", "args": ["a", "b"]},
                    {"type": "del", "args": []},
                    {"type": "move", "args": ["a.*", "b"]},
                    {"type": "del", "args": ["a..b"]},
                    {"args": ["a"]},
                    {"type": "append"}]}}}]},
                {"endpoint": "/b", "backend": [{"url_pattern": "/x"}],
                 "extra_config": {"proxy": {"flatmap_filter": [{"type": "del", "args": ["a"]}]}}},
                {"endpoint": "/c", "backend": [{"url_pattern": "/x", "encoding": "no-op",
                  "extra_config": {"proxy": {"flatmap_filter": {"type": "del"}}}}]}]}),
            vec![
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[0].args: "move" takes two paths (from, to), found 1"#,
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[1].type: unknown operation "rename" (one of "move", "append", "del")"#,
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[2].args: "del" takes at least one path"#,
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[3].args: a move names one key at the end of each path, not "*""#,
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[4].args[0]: "a..b" is not a dotted path (an empty step)"#,
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[5].type: missing (required)"#,
                r#"endpoints[0].backend[0].extra_config.proxy.flatmap_filter[6].args: missing (required): the dotted paths the operation works on"#,
                r#"endpoints[1].extra_config.proxy.flatmap_filter: on an endpoint with one backend KrakenD does not run it (it runs after merging two or more): put it on the backend"#,
                r#"endpoints[2].backend[0].extra_config.proxy.flatmap_filter: expected an array of {"type": ..., "args": [...]}, found an object"#,
            ],
        ),
        (
            "sequential propagated params",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
                {"endpoint": "/a", "backend": [{"url_pattern": "/x"}, {"url_pattern": "/y"}],
                 "extra_config": {"proxy": {"sequential": true,
                    "sequential_propagated_params": ["resp0_a", "resp1_b", "response_x", "resp0_", 7,
                        "resp18446744073709551615_a"]}}},
                {"endpoint": "/b", "backend": [{"url_pattern": "/x"}, {"url_pattern": "/y"}],
                 "extra_config": {"proxy": {"sequential_propagated_params": ["resp0_a"]}}}]}),
            vec![
                r#"endpoints[0].extra_config.proxy.sequential_propagated_params[4]: invalid type: integer "7", expected a string"#,
                r#"endpoints[0].extra_config.proxy.sequential_propagated_params[1]: "resp1_b": backend[1] is not followed by another backend (the endpoint has 2)"#,
                r#"endpoints[0].extra_config.proxy.sequential_propagated_params[2]: "response_x" is not "respN" or "respN_key.path""#,
                r#"endpoints[0].extra_config.proxy.sequential_propagated_params[3]: "resp0_" is not "respN" or "respN_key.path""#,
                r#"endpoints[0].extra_config.proxy.sequential_propagated_params[5]: "resp18446744073709551615_a": backend[18446744073709551615] is not followed by another backend (the endpoint has 2)"#,
                r#"endpoints[1].extra_config.proxy.sequential_propagated_params: needs a sequential proxy (extra_config.proxy.sequential: true)"#,
            ],
        ),
        (
            "circuit breakers",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/x",
                 "extra_config": {"qos/circuit-breaker": {"interval": "60s", "timeout": -1, "max_errors": 70000,
                                  "log_status_change": "yes", "extra": 1}}},
                {"host": ["http://api"], "url_pattern": "/y", "extra_config": {"qos/circuit-breaker": []}}
            ])),
            vec![
                r#"endpoints[0].backend[0].extra_config["qos/circuit-breaker"].interval: expected a whole number of seconds, found the string "60s" (KrakenD would read it as 0)"#,
                r#"endpoints[0].backend[0].extra_config["qos/circuit-breaker"].timeout: expected a whole number from 0 to 3153600000, found -1"#,
                r#"endpoints[0].backend[0].extra_config["qos/circuit-breaker"].max_errors: expected a whole number from 0 to 65000, found 70000"#,
                r#"endpoints[0].backend[0].extra_config["qos/circuit-breaker"].log_status_change: invalid type: string "yes", expected a boolean"#,
                r#"endpoints[0].backend[1].extra_config["qos/circuit-breaker"]: expected an object, found an array"#,
            ],
        ),
        (
            "martian modifiers",
            backends(json!([
                {"host": ["http://api"], "url_pattern": "/a",
                 "extra_config": {"modifier/martian": {"status.Modifier": {"statusCode": 200}}}},
                {"host": ["http://api"], "url_pattern": "/b",
                 "extra_config": {"modifier/martian": {"fifo.Group": {"modifiers": [
                    {"header.Modifier": {"name": "X-A", "value": "1"}},
                    {"querystring.Modifier": {"name": "q", "value": "1", "scope": ["response"]}}]}}}},
                {"host": ["http://api"], "url_pattern": "/c",
                 "extra_config": {"modifier/martian": {"header.Modifier": {"name": "Transfer-Encoding", "value": "chunked"}}}},
                {"host": ["http://api"], "url_pattern": "/d",
                 "extra_config": {"modifier/martian": {"body.Modifier": {"body": "not base64!"}}}},
                {"host": ["http://api"], "url_pattern": "/e",
                 "extra_config": {"modifier/martian": {"header.Modifier": {"name": "X", "value": "1"},
                                                        "header.Append": {"name": "Y", "value": "2"}}}},
                {"host": ["http://api"], "url_pattern": "/f",
                 "extra_config": {"modifier/martian": {"url.Modifier": {"scheme": "ftp"}}}}
            ])),
            vec![
                r#"endpoints[0].backend[0].extra_config["modifier/martian"]["status.Modifier"]: modifier "status.Modifier" is not supported by Sluice (it serves header.Modifier, header.Append, header.Blacklist, querystring.Modifier, body.Modifier, url.Modifier, cookie.Modifier, fifo.Group)"#,
                r#"endpoints[0].backend[1].extra_config["modifier/martian"]["fifo.Group"].modifiers[1]["querystring.Modifier"].scope[0]: this modifier has no "response" scope"#,
                r#"endpoints[0].backend[2].extra_config["modifier/martian"]["header.Modifier"].name: "Transfer-Encoding" frames the message or names the hop: the gateway writes it"#,
                r#"endpoints[0].backend[3].extra_config["modifier/martian"]["body.Modifier"].body: not base64 (standard, padded): Invalid symbol 32, offset 3."#,
                r#"endpoints[0].backend[4].extra_config["modifier/martian"]: expected one modifier, found 2: ["header.Modifier", "header.Append"] (chain several in a fifo.Group)"#,
                r#"endpoints[0].backend[5].extra_config["modifier/martian"]["url.Modifier"].scheme: "ftp": "http" or "https""#,
            ],
        ),
        (
            "an endpoint at the health page's path",
            json!({"version": 3, "host": ["http://api"], "extra_config": {"router": {"health_path": "/ping"}},
                "endpoints": [{"endpoint": "/ping", "backend": [{"url_pattern": "/x"}]}]}),
            vec![r#"endpoints[0].endpoint: "/ping" is the health page's path (extra_config.router.health_path)"#],
        ),
        (
            "router health path and error bodies",
            json!({"version": 3, "extra_config": {"router": {"health_path": "ping", "error_body": "gone",
                "auto_options": "yes"}}}),
            vec![
                r#"extra_config.router.auto_options: invalid type: string "yes", expected a boolean"#,
                r#"extra_config.router.health_path: "ping" must start with /"#,
                r#"extra_config.router.error_body: expected an object, found a string"#,
            ],
        ),
        (
            "tls versions",
            json!({"version": 3, "client_tls": {"min_version": "TLS10"}, "endpoints": [
                {"endpoint": "/a", "backend": [{"host": ["https://api"], "url_pattern": "/x",
                  "extra_config": {"backend/http/client": {"client_tls": {"min_version": "TLS13", "max_version": "TLS12"}}}}]}
            ]}),
            vec![
                r#"client_tls.min_version: unknown value "TLS10", expected "TLS12" or "TLS13""#,
                r#"endpoints[0].backend[0].extra_config["backend/http/client"].client_tls.min_version: min_version is above max_version"#,
            ],
        ),
        (
            "nothing left to trust",
            json!({"version": 3, "client_tls": {"disable_system_ca_pool": true}}),
            vec!["client_tls.disable_system_ca_pool: no CA left to trust: add ca_certs or keep the system pool"],
        ),
        (
            "plugin loader without a folder",
            json!({"version": 3, "plugin": {"pattern": ".so"}}),
            vec!["plugin.folder: missing (required)"],
        ),
        (
            "bad listen_ip",
            json!({"version": 3, "listen_ip": "localhost"}),
            vec![r#"listen_ip: invalid IP address "localhost""#],
        ),
        (
            "bad input header names",
            one(json!({"input_headers": ["X-Ok", "Bad Header"]})),
            vec![r#"endpoints[0].input_headers[1]: invalid header name "Bad Header""#],
        ),
    ];
    let mut failures = Vec::new();
    for (name, config, expected) in &table {
        let got = errors(config);
        if got != *expected {
            failures.push(format!("{name}:\n  expected {expected:#?}\n  got      {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), table.len(), failures.join("\n"));
}

#[test]
fn valid_configs_load() {
    let table: Vec<(&str, Value)> = vec![
        ("empty endpoint list", json!({"version": 3})),
        (
            "root host used as default",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
            {"endpoint": "/a", "backend": [{"url_pattern": "/x"}]}]}),
        ),
        ("host without scheme (KrakenD adds http://)", backends(json!([{"host": ["api:8080"], "url_pattern": "/x"}]))),
        (
            "disable_host_sanitize allows a path prefix",
            backends(json!([
            {"host": ["http://api/v1"], "url_pattern": "/x", "disable_host_sanitize": true}])),
        ),
        (
            "placeholders of every kind",
            one(json!({
            "endpoint": "/u/{id}",
            "input_headers": ["X-Tenant"],
            "extra_config": {"proxy": {"sequential": true}},
            "backend": [
                {"host": ["http://api"], "url_pattern": "/t/{input_headers.X-Tenant}/u/{id}?fields=all"},
                {"host": ["http://api"], "url_pattern": "/orders/{resp0_items.0.id}"}
            ]})),
        ),
        ("a single write backend", one(json!({"method": "POST"}))),
        (
            "write backend last of a sequential proxy",
            one(json!({
            "extra_config": {"proxy": {"sequential": true}},
            "backend": [
                {"host": ["http://api"], "url_pattern": "/a"},
                {"host": ["http://api"], "url_pattern": "/b", "method": "DELETE"}
            ]})),
        ),
        (
            "disable_rest allows in-segment placeholders",
            json!({"version": 3, "disable_rest": true, "endpoints": [
            {"endpoint": "/file.{ext}", "backend": [{"host": ["http://api"], "url_pattern": "/url.{ext}.json"}]}]}),
        ),
        (
            "same path under two methods, different param names",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
            {"endpoint": "/u/{id}", "backend": [{"url_pattern": "/x/{id}"}]},
            {"endpoint": "/u/{user}", "method": "DELETE", "backend": [{"url_pattern": "/x/{user}"}]}]}),
        ),
        (
            "static and param siblings",
            json!({"version": 3, "host": ["http://api"], "endpoints": [
            {"endpoint": "/u/{id}", "backend": [{"url_pattern": "/x/{id}"}]},
            {"endpoint": "/u/me", "backend": [{"url_pattern": "/me"}]}]}),
        ),
        (
            "no-op both sides",
            one(json!({"output_encoding": "no-op",
            "backend": [{"host": ["http://api"], "url_pattern": "/x", "encoding": "no-op"}]})),
        ),
        // As lura: the endpoint's no-op output makes its backend no-op; a no-op backend
        // may sit in an aggregating endpoint.
        ("no-op output, backend encoding unset", one(json!({"output_encoding": "no-op"}))),
        (
            "no-op backend beside a json one",
            backends(json!([{"host": ["http://api"], "url_pattern": "/x", "encoding": "no-op"},
                            {"host": ["http://api"], "url_pattern": "/y"}])),
        ),
        ("nulls count as absent", json!({"version": 3, "name": null, "timeout": null, "endpoints": null})),
        (
            "proxy address with credentials",
            backends(json!([{"host": ["http://api"], "url_pattern": "/x",
            "extra_config": {"plugin/http-client": {"name": "http-proxy", "proxy_address": "http://u:p@proxy:3128"}}}])),
        ),
    ];
    for (name, config) in table {
        assert_eq!(errors(&config), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn five_mistakes_are_five_lines_in_document_order() {
    let config = json!({
        "version": 2,
        "endpoints": [
            {"endpoint": "/users/{id}", "backend": [
                {"host": ["http://api/v1"], "url_pattern": "/u/{user}"},
                {"host": ["http://api"], "url_pattern": "/x", "encoding": "jsonn"}
            ]},
            {"endpoint": "/b", "backend": []}
        ]
    });
    let got = errors(&config);
    let paths: Vec<&str> = got.iter().map(|l| l.split(": ").next().unwrap_or("")).collect();
    assert_eq!(
        paths,
        [
            "version",
            "endpoints[0].backend[0].host[0]",
            "endpoints[0].backend[0].url_pattern",
            "endpoints[0].backend[1].encoding",
            "endpoints[1].backend",
        ]
    );
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let text = "{\n  \"version\": 3,\n  \"endpoints\": [\n    {\"endpoint\": \"/a\",}\n  ]\n}";
    match Gateway::load(text) {
        Err(ConfigError::Syntax { line, column, message }) => {
            assert_eq!((line, column, message.as_str()), (4, 23, "trailing comma"));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    match Gateway::load("") {
        Err(ConfigError::Syntax { line, column, message }) => {
            assert_eq!((line, column, message.as_str()), (1, 0, "EOF while parsing a value"));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn defaults_are_krakend_s_or_documented() {
    let loaded = Gateway::load(&backends(json!([{"host": ["http://api"], "url_pattern": "/x"}])).to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.gateway.config;
    assert_eq!(c.port, 8080);
    assert_eq!(c.listen_ip.to_string(), "0.0.0.0");
    assert_eq!(c.timeout, std::time::Duration::from_secs(2));
    assert_eq!(c.max_idle_connections_per_host, 250);
    assert_eq!(c.max_header_bytes, 65_536);
    assert_eq!(c.read_header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(c.max_shutdown_wait_time, std::time::Duration::from_secs(10));
    assert_eq!(c.router.remote_ip_headers, ["X-Forwarded-For", "X-Real-IP"]);
    let e = &c.endpoints[0];
    assert_eq!(e.method, http::Method::GET);
    assert!(!e.sequential);
    let b = &e.backend[0];
    assert_eq!(b.encoding, sluice_core::config::Encoding::Json);
    assert!(!b.is_collection);
    assert_eq!(b.method, None);
    let plan = &loaded.gateway.endpoints[0];
    assert_eq!(plan.timeout, std::time::Duration::from_secs(2));
    assert_eq!(plan.backends[0].method, http::Method::GET);
    assert_eq!(plan.backends[0].hosts[0].addr.to_string(), "http://api");
}

#[test]
fn lint_warnings_name_unknown_keys() {
    let config = json!({
        "version": 3,
        "$schema": "https://example/krakend.json",
        "colour": "blue",
        "extra_config": {"telemetry/metrics": {"collection_time": "60s"}, "vendor/thing": {}},
        "endpoints": [{
            "endpoint": "/a",
            "headers_to_pass": ["X"],
            "backend": [{"host": ["http://api"], "url_pattern": "/x", "allow": ["a"], "deny": ["b"],
                "extra_config": {"backend/http": {"return_error_code": true, "retries": 3},
                                 "plugin/http-client": {"name": "mine", "anything": 1}}}]
        }]
    });
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    // A namespace that only observes is a notice, said by check and run; one Sluice does
    // not know, too.
    let notices: Vec<String> = loaded.notices.iter().map(ToString::to_string).collect();
    assert_eq!(
        notices,
        [
            r#"extra_config["telemetry/metrics"]: only observes: not supported by Sluice, ignored"#,
            r#"extra_config["vendor/thing"]: namespace not supported by Sluice, ignored"#,
        ]
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "endpoints[0].backend[0].deny: ignored: allow and deny are both set, and allow wins",
            r#"endpoints[0].backend[0].extra_config["backend/http"].retries: unknown key, ignored"#,
            r#"endpoints[0].headers_to_pass: unknown key, ignored (KrakenD v3 calls it "input_headers")"#,
            "colour: unknown key, ignored",
        ]
    );
    let plugin = loaded.gateway.config.endpoints[0].backend[0].plugin.clone();
    assert_eq!(plugin.map(|p| (p.name, p.options.len())), Some(("mine".to_string(), 1)));
}

#[test]
fn a_no_op_endpoint_overrides_its_backends_encoding_and_says_so() {
    let config = one(json!({"output_encoding": "no-op",
        "backend": [{"host": ["http://api"], "url_pattern": "/x", "encoding": "json"}]}));
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let notices: Vec<String> = loaded.notices.iter().map(ToString::to_string).collect();
    assert_eq!(
        notices,
        [
            r#"endpoints[0].backend[0].encoding: "json" is not used: the endpoint's "no-op" output passes this backend through undecoded"#
        ]
    );
    assert_eq!(loaded.gateway.config.endpoints[0].backend[0].encoding, sluice_core::config::Encoding::NoOp);
    let unset = one(json!({"output_encoding": "no-op"}));
    let loaded = Gateway::load(&unset.to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.notices.is_empty());
    assert_eq!(loaded.gateway.config.endpoints[0].backend[0].encoding, sluice_core::config::Encoding::NoOp);
}

#[test]
fn plan_resolves_hosts_and_url_patterns() {
    use sluice_core::plan::UrlPiece;
    let config = json!({"version": 3, "host": ["https://root:8443"], "endpoints": [
        {"endpoint": "/u/{id}", "input_headers": ["X-T"], "extra_config": {"proxy": {"sequential": true}}, "backend": [
            {"url_pattern": "/a/{id}"},
            {"host": ["http://api/base/"], "disable_host_sanitize": true,
             "url_pattern": "/t/{input_headers.X-T}/{resp0_items.0.id}?x=1"}
        ]}
    ]});
    let gw = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}")).gateway;
    let b0 = &gw.endpoints[0].backends[0];
    assert_eq!(b0.hosts[0].addr.to_string(), "https://root:8443");
    assert_eq!(b0.url_pattern, [UrlPiece::Literal("/a/".into()), UrlPiece::Param("id".into())]);
    let b1 = &gw.endpoints[0].backends[1];
    assert_eq!(b1.hosts[0].addr.to_string(), "http://api");
    assert_eq!(b1.hosts[0].path_prefix, "/base");
    assert_eq!(
        b1.url_pattern,
        [
            UrlPiece::Literal("/t/".into()),
            UrlPiece::InputHeader(http::HeaderName::from_static("x-t")),
            UrlPiece::Literal("/".into()),
            UrlPiece::Response { index: 0, path: vec!["items".into(), "0".into(), "id".into()] },
            UrlPiece::Literal("?x=1".into()),
        ]
    );
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../examples/krakend.json");
    let loaded = Gateway::load(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.gateway.endpoints.len(), 5);
}

/// `/{p0}/{p1}/...` with `n` parameters.
fn many_params(n: usize) -> String {
    (0..n).map(|i| format!("/{{p{i}}}")).collect()
}

#[test]
fn text_over_the_size_limit_is_refused_before_parsing() {
    let limit = sluice_core::config::MAX_CONFIG_BYTES;
    let mut doc = format!(r#"{{"version": 3, "endpoints": [], "name": "{}"}}"#, " ".repeat(limit));
    let err = Gateway::load(&doc).unwrap_err().to_string();
    assert_eq!(err, format!("the configuration is larger than 8 MiB ({} bytes or more): refused", doc.len()));
    doc.truncate(0);
    doc.push_str(r#"{"version": 3, "endpoints": []}"#);
    assert!(Gateway::load(&doc).is_ok());
}

#[test]
fn router_options_krakend_reads_and_sluice_does_not_are_notices() {
    let config = json!({"version": 3, "extra_config": {"router": {
        "disable_access_log": true, "logger_skip_paths": ["/__health"], "use_h2c": false, "app_engine": false,
        "max_multipart_memory": 0, "remove_extra_slash": true, "hide_version_header": true,
        "error_body": {"404": {"b": [1, "<", 2.0, 1e3, 0.5], "a": {"z": 1, "y": 2}}, "406": {}}}}});
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let notices: Vec<String> = loaded.notices.iter().map(ToString::to_string).collect();
    assert_eq!(
        notices,
        [
            "extra_config.router.disable_access_log: not supported by Sluice, ignored: every request is logged at the sluice::access target; filter it with RUST_LOG",
            "extra_config.router.logger_skip_paths: not supported by Sluice, ignored: every request is logged at the sluice::access target; filter it with RUST_LOG",
            "extra_config.router.remove_extra_slash: not supported by Sluice, ignored: repeated slashes are redirected to the cleaned path (gin's fixed-path redirect) instead",
        ]
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings, ["extra_config.router.error_body.406: unknown key, ignored"]);
    let router = &loaded.gateway.config.router;
    assert_eq!(router.error_body_404.as_deref(), Some(r#"{"a":{"y":2,"z":1},"b":[1,"\u003c",2,1000,0.5]}"#));
    assert_eq!(router.error_body_405, None);
}

/// `qos/ratelimit/router`'s rates per second and its capacities when none is given,
/// as krakend-ratelimit computes them.
#[test]
fn rate_limit_defaults_are_krakend_s() {
    let limit = |block: Value| {
        let config = json!({"version": 3, "endpoints": [{"endpoint": "/a", "extra_config": {"qos/ratelimit/router": block},
            "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]});
        let loaded = sluice_core::Gateway::load(&config.to_string()).unwrap();
        let r = loaded.gateway.config.endpoints[0].rate_limit.clone().unwrap();
        (r.max_rate, r.capacity, r.client_max_rate, r.client_capacity, r.client_slots)
    };
    assert_eq!(limit(json!({"max_rate": 50})), (50.0, 50, 0.0, 1, 16_384));
    // Ten a minute: one at once (a rate under 1 a second).
    assert_eq!(limit(json!({"max_rate": 10, "every": "1m"})), (10.0 / 60.0, 1, 0.0, 1, 16_384));
    // A client's default burst reads the endpoint's rate: none here, so 1.
    assert_eq!(limit(json!({"client_max_rate": 10, "strategy": "ip"})), (0.0, 1, 10.0, 1, 16_384));
    assert_eq!(
        limit(json!({"max_rate": 100, "client_max_rate": 10, "strategy": "ip"})),
        (100.0, 100, 10.0, 10, 16_384)
    );
    assert_eq!(
        limit(json!({"max_rate": 5, "capacity": 7, "client_max_rate": 1, "client_capacity": 3, "strategy": "ip",
            "num_shards": 16})),
        (5.0, 7, 1.0, 3, 128)
    );
}

/// `strategy: "ip"` with a `key` reads the header only from a trusted proxy, right to
/// left past the trusted ones: a client cannot pick its own bucket.
#[test]
fn a_forwarded_address_is_believed_only_from_a_trusted_proxy() {
    let config = json!({"version": 3, "extra_config": {"router": {"trusted_proxies": ["10.0.0.0/8"]}},
        "endpoints": [{"endpoint": "/a", "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]});
    let gw = Gateway::load(&config.to_string()).unwrap().gateway;
    let router = &gw.config.router;
    let head =
        sluice_core::http1::Head::from_fields([("X-Forwarded-For", &b"203.0.113.9, 198.51.100.7, 10.1.1.1"[..])]);
    let ip = |peer: &str| router.forwarded_ip(peer.parse().unwrap(), &head, ["x-forwarded-for"]).to_string();
    // From a trusted proxy: the last address that is not a trusted proxy.
    assert_eq!(ip("10.0.0.2"), "198.51.100.7");
    // From anyone else: the peer, whatever the header says.
    assert_eq!(ip("192.0.2.1"), "192.0.2.1");
}

#[test]
fn pipeline_settings_kraken_ignores_are_warned_about() {
    let config = one(json!({"backend": [
        {"host": ["http://api"], "url_pattern": "/x", "allow": ["a"], "mapping": {"a": "b"},
         "extra_config": {"proxy": {"flatmap_filter": [{"type": "del", "args": ["c"]}]},
                          "qos/circuit-breaker": {"interval": 0, "timeout": 0, "max_errors": 0}}},
        {"host": ["http://api"], "url_pattern": "/y", "extra_config": {"qos/circuit-breaker": {"name": "n"}}}]}));
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            r#"endpoints[0].backend[0].extra_config["qos/circuit-breaker"]: sets nothing: KrakenD builds no breaker, and neither does Sluice"#,
            "endpoints[0].backend[0].allow: ignored: the backend's proxy.flatmap_filter takes the place of allow, deny and mapping",
            "endpoints[0].backend[0].mapping: ignored: the backend's proxy.flatmap_filter takes the place of allow, deny and mapping",
        ]
    );
    assert!(loaded.gateway.endpoints[0].backends[0].breaker.is_none());
    // A name is enough for KrakenD to build one (it opens on the first failure).
    assert!(loaded.gateway.endpoints[0].backends[1].breaker.is_some());
}

#[test]
fn propagated_params_nothing_reads_are_warned_about() {
    let config = json!({"version": 3, "host": ["http://api"], "endpoints": [{"endpoint": "/a",
        "backend": [{"url_pattern": "/x"}, {"url_pattern": "/y"}],
        "extra_config": {"proxy": {"sequential": true, "sequential_propagated_params": ["resp0", "resp0_a"]}}}]});
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "endpoints[0].extra_config.proxy.sequential_propagated_params[0]: sets nothing: the whole answer of backend[0] is kept only from a no-op backend (as lura)",
            "endpoints[0].extra_config.proxy.sequential_propagated_params[1]: nothing reads it: no backend after backend[0] has validation/cel checks (lura hands it to Lua and plugins)",
        ]
    );
}

/// `telemetry/opentelemetry` as krakend-otel reads it: its defaults, the parts Sluice
/// does not make said as notices, and what cannot be read refused with its path.
#[test]
fn opentelemetry_is_read_as_krakend_otel_reads_it() {
    let ns = |otel: Value| {
        json!({"version": 3, "name": "edge", "extra_config": {"telemetry/opentelemetry": otel},
        "endpoints": [{"endpoint": "/a/{id}/{Id2}", "backend": [{"host": ["http://api:8000"], "url_pattern": "/u/{id}/{Id2}"}]}]})
    };
    let otlp =
        json!({"otlp": [{"name": "c", "host": "collector", "port": 4318, "use_http": true, "disable_metrics": true}]});
    // The defaults: every layer traced, rate 1, KrakenD's skip paths, the file's name.
    let loaded = Gateway::load(&ns(json!({"exporters": otlp})).to_string()).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.notices.is_empty(), "{:?}", loaded.notices);
    let t = loaded.gateway.config.tracing.as_ref().unwrap();
    assert_eq!((t.service_name.as_str(), t.sample_rate), ("edge", 1.0));
    assert_eq!(t.skip_paths, ["/__health", "/__debug/", "/__echo/", "/__stats/"]);
    assert!(t.global.traces && t.global.propagation && t.proxy.traces && t.backend.stage && t.backend.round_trip);
    let tracer = loaded.gateway.tracer.as_ref().unwrap();
    assert_eq!(tracer.endpoints[0].route, "/a/:id/:Id2");
    assert_eq!(tracer.endpoints[0].backends[0].route, "/u/:id/:id2");
    assert_eq!(tracer.endpoints[0].backends[0].method, "GET");

    // What Sluice does not make is said, never ignored in silence.
    let config = ns(json!({
        "trace_sample_rate": 0, "metric_reporting_period": 30,
        "exporters": {
            "otlp": [{"name": "grpc", "host": "collector", "port": 4317},
                     {"name": "http", "host": "https://collector", "port": 4318, "use_http": true}],
            "prometheus": [{"name": "prom", "port": 9090}]},
        "layers": {"global": {"report_headers": true}, "backend": {"traces": {"detailed_connection": true, "round_trip": true}}}}));
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let notices: Vec<String> = loaded.notices.iter().map(ToString::to_string).collect();
    let at = r#"extra_config["telemetry/opentelemetry"]"#;
    assert_eq!(
        notices,
        [
            format!(r#"{at}.trace_sample_rate: 0 or below samples every trace, as KrakenD does (it means "not set")"#),
            format!("{at}.metric_reporting_period: OTLP metrics are not sent by Sluice: ignored"),
            format!(
                r#"{at}.exporters.otlp[0].use_http: OTLP over gRPC is not sent by Sluice: this exporter gets no spans; set "use_http": true and the collector's OTLP/HTTP port (4318 by default)"#
            ),
            format!(
                "{at}.exporters.otlp[0].disable_metrics: OTLP metrics are not sent by Sluice (traces are): the admin listener's /stats/prometheus has the counters"
            ),
            format!(
                "{at}.exporters.otlp[1].disable_metrics: OTLP metrics are not sent by Sluice (traces are): the admin listener's /stats/prometheus has the counters"
            ),
            format!(
                "{at}.exporters.prometheus[0]: not started by Sluice: the admin listener's /stats/prometheus serves the counters"
            ),
            format!(
                "{at}.layers.global.report_headers: not supported: header values are not put on spans by Sluice; ignored"
            ),
            format!(
                "{at}.layers.backend.traces.detailed_connection: not supported: connection timings are not put on spans by Sluice; ignored"
            ),
        ]
    );
    let t = loaded.gateway.config.tracing.as_ref().unwrap();
    assert_eq!(
        t.exporters.iter().filter(|e| e.sends_traces()).map(|e| e.origin()).collect::<Vec<_>>(),
        ["https://collector:4318"]
    );

    // No exporter that takes traces: nothing is made, and that is said.
    let loaded = Gateway::load(
        &ns(json!({"exporters": {"otlp": [{"name": "g", "host": "c", "port": 4317, "disable_metrics": true}]}}))
            .to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.gateway.tracer.is_none());
    let notices: Vec<String> = loaded.notices.iter().map(ToString::to_string).collect();
    assert_eq!(
        notices.last().map(String::as_str),
        Some(r#"extra_config["telemetry/opentelemetry"]: no OTLP exporter over HTTP takes traces: no spans are made"#)
    );

    // At an endpoint, krakend-otel reads the proxy layer and global's static
    // attributes; the rest is said.
    let mut config = ns(json!({"exporters": otlp}));
    config["endpoints"][0]["extra_config"] = json!({"telemetry/opentelemetry": {
        "global": {"disable_traces": true, "traces_static_attributes": [{"key": "k", "value": "v"}]},
        "proxy": {"disable_traces": true}, "backend": {}}});
    let loaded = Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let notices: Vec<String> = loaded.notices.iter().map(ToString::to_string).collect();
    let ep = r#"endpoints[0].extra_config["telemetry/opentelemetry"]"#;
    assert_eq!(
        notices,
        [
            format!(
                "{ep}.global.disable_traces: ignored at an endpoint: krakend-otel reads only the root's (the static attributes are read here)"
            ),
            format!("{ep}.backend: ignored at an endpoint: krakend-otel reads a backend's own here"),
        ]
    );
    let tracer = loaded.gateway.tracer.as_ref().unwrap();
    assert_eq!(tracer.endpoints[0].server_attributes, [("k".to_string(), "v".to_string())]);
    assert!(!tracer.endpoints[0].proxy.traces);

    // What cannot be read is refused with its path.
    for (otel, expected) in [
        (
            // A host the spans are posted to is read as a backend's host is (a gRPC
            // exporter gets none: its host is not read).
            json!({"exporters": {"otlp": [
                {"name": "a", "host": "http://user:pw@collector", "port": 4318, "use_http": true},
                {"name": "b", "host": "https://collector/otel", "port": 4318, "use_http": true},
                {"name": "c", "host": "collector:4318", "port": 4318, "use_http": true},
                {"name": "d", "host": "collector?x=1", "port": 4318, "use_http": true},
                {"name": "e", "host": "http://user:pw@grpc/x", "port": 4317},
                {"name": "f", "host": "http://[::1]/", "port": 4318, "use_http": true},
                {"name": "g", "host": "ftp://collector", "port": 4318, "use_http": true},
                {"name": "h", "host": "HTTPS://collector", "port": 4318, "use_http": true}]}}),
            vec![
                format!(r#"{at}.exporters.otlp[0].host: a host must not carry credentials ("http://***@collector")"#),
                format!(
                    r#"{at}.exporters.otlp[1].host: a host must not have a path ("/otel" in "https://collector/otel"): the spans go to /v1/traces of the host"#
                ),
                format!(
                    r#"{at}.exporters.otlp[2].host: a host must not have a port ("collector:4318"): "port" gives it"#
                ),
                format!(
                    r#"{at}.exporters.otlp[3].host: a host must not have a query or fragment ("http://collector?x=1")"#
                ),
                format!(r#"{at}.exporters.otlp[6].host: a collector is reached over http:// or https://, not "ftp""#),
            ],
        ),
        (
            json!({"exporters": {"otlp": [{"name": "a", "host": "c", "port": 1, "use_http": true}, {"name": "a", "host": "d", "port": 2, "use_http": true}]}}),
            vec![format!(r#"{at}.exporters.otlp[1].name: OTLP exporter with duplicate name: "a""#)],
        ),
        (
            json!({"exporters": {"otlp": [{"name": "a", "port": 70000, "use_http": true}]}}),
            vec![
                format!("{at}.exporters.otlp[0].host: missing (required)"),
                format!("{at}.exporters.otlp[0].port: expected a whole number from 1 to 65535, found 70000"),
            ],
        ),
        (
            json!({"trace_sample_rate": "1", "exporters": {"otlp": {}}}),
            vec![
                format!(r#"{at}.trace_sample_rate: expected a number from 0 to 1, found a string"#),
                format!("{at}.exporters.otlp: expected an array of exporters, found an object"),
            ],
        ),
        (
            json!({"exporters": {"otlp": [{"name": "a", "host": "c", "port": 1, "use_http": true}]},
                   "layers": {"global": {"traces_static_attributes": [{"key": 1}]}}}),
            vec![format!(
                r#"{at}.layers.global.traces_static_attributes[0].key: invalid type: integer "1", expected a string"#
            )],
        ),
    ] {
        assert_eq!(errors(&ns(otel)), expected);
    }
}
