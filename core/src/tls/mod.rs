//! TLS, both ways. To backends: one rustls `ClientConfig` per TLS profile, built when
//! the configuration is compiled (root `client_tls`, or a backend's own in
//! `"backend/http/client"`, which replaces the root one for that backend). On the
//! gateway's listener: the [`ServerProfile`] of the root `tls` block. Both sides run
//! through the one rustls adapter of the crate-private `link` module.
//!
//! Core stays Sans-IO: certificate and key files and the system's trusted roots are
//! read by the loader and handed over through [`Environment`]. rustls runs on its
//! `ring` provider: it builds with nothing but a C compiler (aws-lc-rs, rustls'
//! default, needs CMake and, on some targets, NASM).
//!
//! What a profile does: the system roots (unless `disable_system_ca_pool`) plus every
//! `ca_certs` file; TLS 1.2 and 1.3 within `min_version`/`max_version`; ALPN
//! `http/1.1`; SNI from the backend's host name (none for an IP address); session
//! resumption (rustls' in-memory cache, shared by the shards: it is only touched
//! during handshakes); `client_certs` for mutual TLS (the first pair is presented);
//! `allow_insecure_connections` turns verification off (and the start-up log warns).
//!
//! The gateway's own listener ([`server_profile`], the root `tls` object): one
//! certificate and key, TLS 1.3 only unless `min_version` says otherwise (KrakenD's
//! default), ALPN `http/1.1`, and with `enable_mtls` a client certificate required,
//! chaining to `ca_certs` (and the system roots unless `disable_system_ca_pool`).
//!
//! Connections are pooled per profile: a profile has a [`TlsProfile::id`] of its own,
//! and the pool key of an `https://` connection names it (see
//! [`crate::call::backend::pool_key`]), so a connection made under one profile (say,
//! without verification, or with a client certificate) is never reused by a call
//! under another. Session tickets cannot cross profiles either: each profile's
//! `ClientConfig` has its own resumption store. Backends whose `client_tls` settings
//! are equal share one compiled profile (the plan compiles each distinct setting once),
//! and so share their connections and tickets, as they would have made the same ones.
//!
//! `cipher_suites` lists IANA numbers as Go writes them (`4865` is
//! TLS_AES_128_GCM_SHA256, `49199` TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256). Go applies
//! the list to TLS 1.2 only; Sluice applies it per version: the TLS 1.3 suites it
//! names, or all of them when it names none, and the same for TLS 1.2. A number rustls
//! does not implement (CBC, RSA key exchange, 3DES...) is ignored and named in the
//! start-up line; a list that leaves no suite is a `check` error.

pub(crate) mod link;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use std::mem;

use crate::call::proxy::ProxyEnv;
use crate::config::{ClientCert, ClientTls, ServerTls, TlsVersion};

/// Reads a file the configuration names: its bytes, or why not.
pub type ReadFile = Box<dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync>;

/// Fetches a document the configuration names by URL (an `auth/validator` key set):
/// its body, or why not.
pub type Fetch = Box<dyn Fn(&FetchRequest) -> Result<Vec<u8>, String> + Send + Sync>;

/// What [`Environment::fetch`] is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// A PEM file of roots trusted beside the system's.
    pub ca: Option<String>,
    /// The server is not verified (the configuration says so, with a notice).
    pub insecure: bool,
}

/// What the loader hands core besides the configuration text.
pub struct Environment {
    /// `HTTP_PROXY` and friends.
    pub proxy: ProxyEnv,
    /// Reads a file the configuration names (certificates, keys): its bytes, or why not.
    pub read_file: ReadFile,
    /// The system's trusted roots, asked for only when an `https://` backend uses them.
    pub system_roots: Box<dyn Fn() -> Vec<CertificateDer<'static>> + Send + Sync>,
    /// Fetches what the configuration names by URL, once, while it is compiled (the
    /// binary does it with the gateway's own backend client).
    pub fetch: Fetch,
}

impl Default for Environment {
    /// No proxy, no files, no system roots (a library user or a test that hands
    /// nothing over).
    fn default() -> Environment {
        Environment {
            proxy: ProxyEnv::default(),
            read_file: Box::new(|path| Err(format!("cannot read {path:?}: no file access was given"))),
            system_roots: Box::new(Vec::new),
            fetch: Box::new(|r| Err(format!("cannot fetch {}: no network access was given", r.url))),
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment").field("proxy", &self.proxy).finish_non_exhaustive()
    }
}

/// A compiled TLS profile.
#[derive(Clone)]
pub struct TlsProfile {
    pub config: Arc<ClientConfig>,
    /// Unique in the process: what a pooled connection's key says it was made under
    /// ([`TlsProfile::id`]); private, so no two profiles can be given the same.
    id: u64,
    /// What it trusts, for the start-up log: `system roots`, `system roots + 1 CA
    /// file`, `1 CA file only`, `INSECURE: no verification`, `+ client certificate`.
    pub label: String,
    pub insecure: bool,
}

impl TlsProfile {
    /// The profile's number, unique in the process: a pooled connection's key names
    /// it, and a pooled session carries it (checked when the session is reused).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl std::fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProfile").field("id", &self.id).field("label", &self.label).finish_non_exhaustive()
    }
}

impl PartialEq for TlsProfile {
    fn eq(&self, other: &TlsProfile) -> bool {
        self.id == other.id
    }
}

impl Eq for TlsProfile {}

/// Where to reach an `https://` backend host: its profile and the name its
/// certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    pub profile: TlsProfile,
    pub server_name: ServerName<'static>,
}

/// The provider with the cipher suites `ids` asks for (see the module docs), and the
/// numbers it ignored.
fn provider(ids: &[u16]) -> Result<(Arc<CryptoProvider>, Vec<u16>), String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if ids.is_empty() {
        return Ok((Arc::new(provider), Vec::new()));
    }
    let listed = |s: &SupportedCipherSuite| ids.contains(&u16::from(s.suite()));
    let is13 = |s: &SupportedCipherSuite| matches!(s, SupportedCipherSuite::Tls13(_));
    let names13 = provider.cipher_suites.iter().any(|s| is13(s) && listed(s));
    let names12 = provider.cipher_suites.iter().any(|s| !is13(s) && listed(s));
    if !names13 && !names12 {
        return Err(format!("none of {ids:?} is a cipher suite rustls offers (it has {})", suite_numbers(&provider)));
    }
    let ignored = ids.iter().copied().filter(|id| !provider.cipher_suites.iter().any(|s| u16::from(s.suite()) == *id));
    let ignored = ignored.collect();
    provider.cipher_suites.retain(|s| listed(s) || (is13(s) && !names13) || (!is13(s) && !names12));
    Ok((Arc::new(provider), ignored))
}

fn suite_numbers(provider: &CryptoProvider) -> String {
    let numbers: Vec<String> = provider.cipher_suites.iter().map(|s| u16::from(s.suite()).to_string()).collect();
    numbers.join(", ")
}

/// TLS versions within `min`..=`max`.
fn versions(min: Option<TlsVersion>, max: Option<TlsVersion>) -> Vec<&'static rustls::SupportedProtocolVersion> {
    [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| min.is_none_or(|min| *v >= min) && max.is_none_or(|max| *v <= max))
        .map(|(_, p)| p)
        .collect()
}

/// The ignored suite numbers for a start-up label.
fn ignored_label(ignored: &[u16]) -> Option<String> {
    (!ignored.is_empty()).then(|| format!("cipher_suites {ignored:?} ignored (not in rustls)"))
}

/// Builds a profile from `settings` (`None`: the defaults). Errors are `(JSON path
/// below the client_tls object, message)`.
pub fn profile(settings: Option<&ClientTls>, env: &Environment) -> Result<TlsProfile, Vec<(String, String)>> {
    let default = ClientTls::default();
    let t = settings.unwrap_or(&default);
    let mut errors = Vec::new();
    let (provider, ignored) = provider(&t.cipher_suites).map_err(|m| vec![("cipher_suites".to_string(), m)])?;
    let versions = versions(t.min_version, t.max_version);
    let builder = match ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions) {
        Ok(b) => b,
        Err(e) => return Err(vec![("cipher_suites".into(), format!("no cipher suite left for these versions: {e}"))]),
    };
    let mut label = Vec::new();
    let builder = if t.allow_insecure_connections {
        label.push("INSECURE: no certificate verification".to_string());
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider.signature_verification_algorithms)))
    } else {
        let (roots, system) = roots(&t.ca_certs, !t.disable_system_ca_pool, env, &mut errors);
        if !t.disable_system_ca_pool {
            label.push(format!("system roots ({system})"));
        }
        if !t.ca_certs.is_empty() {
            label.push(format!("{} CA file(s)", t.ca_certs.len()));
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match t.client_certs.first() {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let (chain, key) =
                key_pair(pair, env, "client_certs[0].certificate", "client_certs[0].private_key", &mut errors)?;
            match builder.with_client_auth_cert(chain, key) {
                Ok(c) => {
                    label.push("client certificate".into());
                    c
                }
                Err(e) => {
                    errors.push(("client_certs[0]".into(), mismatch(pair, &e)));
                    return Err(errors);
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    label.extend(ignored_label(&ignored));
    // Each compiled profile is told apart from every other one in the process.
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Ok(TlsProfile { config: Arc::new(config), id, label: label.join(" + "), insecure: t.allow_insecure_connections })
}

/// The gateway's listener TLS, compiled.
#[derive(Clone)]
pub struct ServerProfile {
    pub config: Arc<ServerConfig>,
    /// For the start-up log: versions, client certificates, ignored suites.
    pub label: String,
}

impl std::fmt::Debug for ServerProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProfile").field("label", &self.label).finish_non_exhaustive()
    }
}

/// Builds the listener's TLS from the root `tls` object. Errors are `(JSON path below
/// tls, message)`.
pub fn server_profile(t: &ServerTls, env: &Environment) -> Result<ServerProfile, Vec<(String, String)>> {
    let (provider, ignored) = provider(&t.cipher_suites).map_err(|m| vec![("cipher_suites".to_string(), m)])?;
    // KrakenD's default: TLS 1.3 only.
    let versions = versions(Some(t.min_version.unwrap_or(TlsVersion::Tls13)), t.max_version);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| vec![("cipher_suites".into(), format!("no cipher suite left for these versions: {e}"))])?;
    let mut errors = Vec::new();
    let mut label = vec![match versions.as_slice() {
        [only] if only.version == rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_string(),
        [_] => "TLS 1.2".to_string(),
        _ => "TLS 1.2 and 1.3".to_string(),
    }];
    let builder = if t.enable_mtls {
        let (roots, _) = roots(&t.ca_certs, !t.disable_system_ca_pool, env, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        label.push(format!("client certificate required ({} CA file(s))", t.ca_certs.len()));
        match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build() {
            Ok(verifier) => builder.with_client_cert_verifier(verifier),
            Err(e) => return Err(vec![("ca_certs".into(), format!("cannot check client certificates: {e}"))]),
        }
    } else {
        builder.with_no_client_auth()
    };
    let Some(pair) = t.keys.first() else {
        return Err(vec![("public_key".into(), "missing: the certificate (public_key) and its private_key".into())]);
    };
    let (cert_at, key_at) =
        if t.from_keys { ("keys[0].public_key", "keys[0].private_key") } else { ("public_key", "private_key") };
    let (chain, key) = key_pair(pair, env, cert_at, key_at, &mut errors)?;
    let mut config = builder.with_single_cert(chain, key).map_err(|e| vec![(key_at.into(), mismatch(pair, &e))])?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    label.extend(ignored_label(&ignored));
    Ok(ServerProfile { config: Arc::new(config), label: label.join(" + ") })
}

/// The trusted roots: the system's (when `system`; how many were usable is returned)
/// and every certificate of the `ca_certs` files. Errors go to `errors` by JSON path.
fn roots(
    ca_certs: &[String],
    system: bool,
    env: &Environment,
    errors: &mut Vec<(String, String)>,
) -> (RootCertStore, usize) {
    let mut roots = RootCertStore::empty();
    let added = if system { roots.add_parsable_certificates((env.system_roots)()).0 } else { 0 };
    for (i, path) in ca_certs.iter().enumerate() {
        match pem_certs(path, env) {
            Ok(certs) => {
                for c in certs {
                    if let Err(e) = roots.add(c) {
                        errors.push((format!("ca_certs[{i}]"), format!("{path:?}: not a usable CA certificate: {e}")));
                    }
                }
            }
            Err(m) => errors.push((format!("ca_certs[{i}]"), m)),
        }
    }
    (roots, added)
}

/// Errors by JSON path below the TLS object, and their messages.
type Errors = Vec<(String, String)>;

/// A certificate chain and its private key, read from their PEM files; what went wrong
/// with either is added to `errors` under `cert_at`/`key_at`, and all of them returned.
fn key_pair(
    pair: &ClientCert,
    env: &Environment,
    cert_at: &str,
    key_at: &str,
    errors: &mut Vec<(String, String)>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Errors> {
    let chain = pem_certs(&pair.certificate, env);
    let key = (env.read_file)(&pair.private_key).and_then(|pem| {
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{:?}: no private key in it ({e})", pair.private_key))
    });
    match (chain, key) {
        (Ok(chain), Ok(key)) => Ok((chain, key)),
        (chain, key) => {
            if let Err(m) = chain {
                errors.push((cert_at.into(), m));
            }
            if let Err(m) = key {
                errors.push((key_at.into(), m));
            }
            Err(mem::take(errors))
        }
    }
}

/// A key rustls refused beside its certificate.
fn mismatch(pair: &ClientCert, e: &rustls::Error) -> String {
    format!("the key does not go with the certificate {:?}: {e}", pair.certificate)
}

/// Every certificate of a PEM file (at least one).
fn pem_certs(path: &str, env: &Environment) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = (env.read_file)(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path:?}: not a PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{path:?}: no certificate in it (PEM \"BEGIN CERTIFICATE\" expected)"));
    }
    Ok(certs)
}

/// `allow_insecure_connections`: any certificate is accepted (signatures are still
/// checked, so the handshake itself is sound; only who the peer is goes unverified).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
