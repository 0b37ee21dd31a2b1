//! The rustls adapter, one for both ends of the gateway: a [`Link`] sits between a
//! socket's ciphertext, which the driver moves, and the plaintext the HTTP codec reads
//! and writes. It is the same type on both sides, around rustls' connection of that
//! side and what that side keeps beside it: [`ServerLink`] is the client's session on
//! an HTTPS listener ([`ListenerSide`]), [`TlsLink`] a backend call's
//! ([`BackendSide`]). rustls is Sans-IO, so this is too.

use std::fmt;
use std::io;
use std::ops::DerefMut;

use crate::buf::ReadBuf;

/// A TLS session between ciphertext and plaintext: rustls' connection `C` (client or
/// server), the vectors ciphertext travels in to and from the driver, and what its side
/// keeps (`S`).
#[derive(Debug)]
pub(crate) struct Link<C, S> {
    pub(crate) conn: C,
    /// The vector ciphertext reads come back in.
    pub(crate) cipher_in: Vec<u8>,
    /// The vector ciphertext is handed to the driver in.
    pub(crate) cipher_out: Vec<u8>,
    pub(crate) side: S,
}

impl<C, D, S> Link<C, S>
where
    C: DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    pub(crate) fn new(conn: C, side: S) -> Link<C, S> {
        Link { conn, cipher_in: Vec::new(), cipher_out: Vec::new(), side }
    }

    /// Feeds ciphertext (`data`; empty: the peer closed) to the session and appends
    /// the plaintext it yields to `input`.
    pub(crate) fn decrypt(&mut self, data: &[u8], input: &mut ReadBuf) -> Result<Decrypted, Undecryptable> {
        decrypt(&mut self.conn, data, input)
    }

    /// Appends all the ciphertext the session wants sent to `out`.
    pub(crate) fn encrypt_pending(&mut self, out: &mut Vec<u8>) {
        let conn: &mut rustls::ConnectionCommon<D> = &mut self.conn;
        while conn.wants_write() {
            if conn.write_tls(out).is_err() {
                break;
            }
        }
    }
}

/// A backend call's TLS session: it encrypts what the call writes and decrypts what
/// it reads, so the call above it deals in plaintext and the driver below moves only
/// ciphertext. One socket operation at a time, as for a plain connection.
pub(crate) type TlsLink = Link<rustls::ClientConnection, BackendSide>;

/// What a backend call's session keeps beside rustls'.
#[derive(Debug)]
pub(crate) struct BackendSide {
    /// The [`crate::tls::TlsProfile::id`] it was made under: a pooled session is only
    /// taken up by a call under the same profile.
    pub(crate) profile: u64,
    /// A ciphertext read or write is out with the driver.
    pub(crate) busy: bool,
    /// Plaintext the call wrote, taken by rustls: the call's write completes once
    /// the handshake is done and all of it went out.
    pub(crate) plain: Option<Vec<u8>>,
}

/// The client's TLS session on an HTTPS listener: it decrypts what the client sends
/// into the connection's input and encrypts its output, so the codec above deals in
/// plaintext and the driver moves ciphertext.
pub(crate) type ServerLink = Link<rustls::ServerConnection, ListenerSide>;

/// What the listener's session with a client keeps beside rustls'.
#[derive(Debug, Default)]
pub(crate) struct ListenerSide {
    /// Some bytes came: the first tell a ClientHello from plain HTTP.
    pub(crate) started: bool,
    /// close_notify is queued, or the session failed: nothing more goes into it.
    pub(crate) closed: bool,
    /// The session failed: what the client still sends is dropped unread.
    pub(crate) failed: bool,
    /// The last read filled its buffer: the next asks for a whole record's worth.
    pub(crate) big_reads: bool,
}

impl ServerLink {
    /// The session is up and has nothing to send: a connection between requests may
    /// wait for its client without a ciphertext buffer. (A part of a record rustls
    /// holds is the start of the next request: it waits for the rest as any read does.)
    pub(crate) fn quiet(&self) -> bool {
        self.side.started
            && !self.side.closed
            && !self.side.failed
            && !self.conn.is_handshaking()
            && !self.conn.wants_write()
    }
}

/// Why feeding ciphertext to a TLS session failed.
#[derive(Debug)]
pub(crate) enum Undecryptable {
    /// rustls could not take the bytes or hand the plaintext out.
    Io(io::Error),
    /// The peer broke the protocol (or the handshake failed).
    Tls(rustls::Error),
}

impl fmt::Display for Undecryptable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undecryptable::Io(e) => e.fmt(f),
            Undecryptable::Tls(e) => e.fmt(f),
        }
    }
}

/// What a batch of ciphertext gave: the peer is done sending (close_notify, or a
/// close without one: the HTTP framing tells a cut body), and whether any plaintext
/// came.
pub(crate) struct Decrypted {
    pub(crate) closed: bool,
    pub(crate) got: bool,
}

/// Feeds ciphertext (`data`; empty: the peer closed) to a TLS session, either side,
/// and appends the plaintext it yields to `input`.
fn decrypt<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    mut data: &[u8],
    input: &mut ReadBuf,
) -> Result<Decrypted, Undecryptable> {
    let mut out = Decrypted { closed: data.is_empty(), got: false };
    loop {
        // Nothing taken while bytes are left: the peer's close_notify was processed,
        // and rustls takes nothing after it. What follows it is dropped; looping on
        // it would never end (a client could spin its shard so).
        if conn.read_tls(&mut data).map_err(Undecryptable::Io)? == 0 && !data.is_empty() {
            out.closed = true;
            return Ok(out);
        }
        conn.process_new_packets().map_err(Undecryptable::Tls)?;
        let mut chunk = [0u8; 4096];
        loop {
            match io::Read::read(&mut conn.reader(), &mut chunk) {
                Ok(0) => {
                    out.closed = true;
                    break;
                }
                Ok(k) => {
                    input.prepare().extend_from_slice(&chunk[..k]);
                    out.got = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    out.closed = true;
                    break;
                }
                Err(e) => return Err(Undecryptable::Io(e)),
            }
        }
        if data.is_empty() {
            return Ok(out);
        }
    }
}

/// A ciphertext read on an idle client connection: small (a request fits), grown to
/// [`TLS_READ`] while reads fill it.
pub(crate) const TLS_CLIENT_READ: usize = 2048;

/// Ciphertext read size: one TLS record and its overhead.
pub(crate) const TLS_READ: usize = 16 * 1024 + 512;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::decrypt;
    use crate::buf::ReadBuf;

    /// A client and a server session with the handshake done, in memory.
    fn pair() -> (ClientConnection, ServerConnection) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = CertificateDer::from(leaf.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(leaf.key_pair.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut flight = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut flight).unwrap();
            }
            s.read_tls(&mut flight.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut back = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut back).unwrap();
            }
            let mut rd = back.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        (c, s)
    }

    #[test]
    fn bytes_after_the_peer_s_close_notify_end_the_read_and_are_dropped() {
        let (mut client, mut server) = pair();
        std::io::Write::write_all(&mut client.writer(), b"GET / HTTP/1.1\r\n\r\n").unwrap();
        client.send_close_notify();
        let mut batch = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut batch).unwrap();
        }
        // More than rustls takes in one read after the close_notify: it took none of
        // it, and the loop went on for ever.
        batch.extend_from_slice(&[0x17; 5000]);
        let mut input = ReadBuf::default();
        let out = decrypt(&mut *server, &batch, &mut input).unwrap();
        assert!(out.closed && out.got);
        assert_eq!(input.pending(), b"GET / HTTP/1.1\r\n\r\n");
    }
}
