//! TLS to backends: one rustls `ClientConfig` per TLS profile, built when the
//! configuration is compiled (root `client_tls`, or a backend's own in
//! `"backend/http/client"`, which replaces the root one for that backend).
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

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{ClientTls, TlsVersion};
use crate::proxy::ProxyEnv;

/// Reads a file the configuration names: its bytes, or why not.
pub type ReadFile = Box<dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync>;

/// What the loader hands core besides the configuration text.
pub struct Environment {
    /// `HTTP_PROXY` and friends.
    pub proxy: ProxyEnv,
    /// Reads a file the configuration names (certificates, keys): its bytes, or why not.
    pub read_file: ReadFile,
    /// The system's trusted roots, asked for only when an `https://` backend uses them.
    pub system_roots: Box<dyn Fn() -> Vec<CertificateDer<'static>> + Send + Sync>,
}

impl Default for Environment {
    /// No proxy, no files, no system roots (a library user or a test that hands
    /// nothing over).
    fn default() -> Environment {
        Environment {
            proxy: ProxyEnv::default(),
            read_file: Box::new(|path| Err(format!("cannot read {path:?}: no file access was given"))),
            system_roots: Box::new(Vec::new),
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
    /// What it trusts, for the start-up log: `system roots`, `system roots + 1 CA
    /// file`, `1 CA file only`, `INSECURE: no verification`, `+ client certificate`.
    pub label: String,
    pub insecure: bool,
}

impl std::fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProfile").field("label", &self.label).finish_non_exhaustive()
    }
}

impl PartialEq for TlsProfile {
    fn eq(&self, other: &TlsProfile) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a profile from `settings` (`None`: the defaults). Errors are `(JSON path
/// below the client_tls object, message)`.
pub fn profile(settings: Option<&ClientTls>, env: &Environment) -> Result<TlsProfile, Vec<(String, String)>> {
    let default = ClientTls::default();
    let t = settings.unwrap_or(&default);
    let mut errors = Vec::new();
    let provider = provider();
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| t.min_version.is_none_or(|min| *v >= min) && t.max_version.is_none_or(|max| *v <= max))
            .map(|(_, p)| p)
            .collect();
    let builder = match ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions) {
        Ok(b) => b,
        Err(e) => return Err(vec![("min_version".into(), format!("no TLS version left: {e}"))]),
    };
    let mut label = Vec::new();
    let builder = if t.allow_insecure_connections {
        label.push("INSECURE: no certificate verification".to_string());
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider.signature_verification_algorithms)))
    } else {
        let mut roots = RootCertStore::empty();
        if !t.disable_system_ca_pool {
            let (added, _ignored) = roots.add_parsable_certificates((env.system_roots)());
            label.push(format!("system roots ({added})"));
        }
        for (i, path) in t.ca_certs.iter().enumerate() {
            match pem_certs(path, env) {
                Ok(certs) => {
                    for c in certs {
                        if let Err(e) = roots.add(c) {
                            errors.push((
                                format!("ca_certs[{i}]"),
                                format!("{path:?}: not a usable CA certificate: {e}"),
                            ));
                        }
                    }
                }
                Err(m) => errors.push((format!("ca_certs[{i}]"), m)),
            }
        }
        if !t.ca_certs.is_empty() {
            label.push(format!("{} CA file(s)", t.ca_certs.len()));
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match t.client_certs.first() {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let chain = pem_certs(&pair.certificate, env);
            let key = (env.read_file)(&pair.private_key).and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| format!("{:?}: no private key in it ({e})", pair.private_key))
            });
            match (chain, key) {
                (Ok(chain), Ok(key)) => match builder.with_client_auth_cert(chain, key) {
                    Ok(c) => {
                        label.push("client certificate".into());
                        c
                    }
                    Err(e) => {
                        errors.push((
                            "client_certs[0]".into(),
                            format!("the key does not go with the certificate {:?}: {e}", pair.certificate),
                        ));
                        return Err(errors);
                    }
                },
                (chain, key) => {
                    if let Err(m) = chain {
                        errors.push(("client_certs[0].certificate".into(), m));
                    }
                    if let Err(m) = key {
                        errors.push(("client_certs[0].private_key".into(), m));
                    }
                    return Err(errors);
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsProfile { config: Arc::new(config), label: label.join(" + "), insecure: t.allow_insecure_connections })
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
