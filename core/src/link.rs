//! The rustls adapter, one for both ends of the gateway: a TLS session sits between
//! a socket's ciphertext, which the driver moves, and the plaintext the HTTP codec
//! reads and writes. [`ServerLink`] is the client's session on an HTTPS listener,
//! [`TlsLink`] a backend connection's; both feed and drain rustls through
//! [`decrypt`] and [`encrypt_pending`]. rustls is Sans-IO, so this is too.

use std::fmt;
use std::io;

use crate::buf::ReadBuf;

/// The TLS session of a backend connection (rustls is Sans-IO): it encrypts what the
/// slot writes and decrypts what it reads, so the slot above it deals in plaintext
/// and the driver below moves only ciphertext. One socket operation at a time, as
/// for a plain connection.
#[derive(Debug)]
pub(crate) struct TlsLink {
    pub(crate) conn: rustls::ClientConnection,
    /// The [`crate::tls::TlsProfile::id`] it was made under: a pooled session is only
    /// taken up by a call under the same profile.
    pub(crate) profile: u64,
    /// Ciphertext handed to the driver, and the vector reads come back in.
    pub(crate) cipher_out: Vec<u8>,
    pub(crate) cipher_in: Vec<u8>,
    /// A ciphertext read or write is out with the driver.
    pub(crate) busy: bool,
    /// Plaintext the slot wrote, taken by rustls: the slot's write completes once
    /// the handshake is done and all of it went out.
    pub(crate) plain: Option<Vec<u8>>,
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
pub(crate) fn decrypt<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    mut data: &[u8],
    input: &mut ReadBuf,
) -> Result<Decrypted, Undecryptable> {
    let mut out = Decrypted { closed: data.is_empty(), got: false };
    loop {
        conn.read_tls(&mut data).map_err(Undecryptable::Io)?;
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

/// Appends all the ciphertext a TLS session wants sent to `out`.
pub(crate) fn encrypt_pending<S: rustls::SideData>(conn: &mut rustls::ConnectionCommon<S>, out: &mut Vec<u8>) {
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// The client's TLS session on an HTTPS listener: it decrypts what the client sends
/// into the connection's input and encrypts its output, so the codec above deals in
/// plaintext and the driver moves ciphertext.
#[derive(Debug)]
pub(crate) struct ServerLink {
    pub(crate) conn: rustls::ServerConnection,
    /// The vector ciphertext reads go out in, and the one writes go out in.
    pub(crate) cipher_in: Vec<u8>,
    pub(crate) cipher_out: Vec<u8>,
    /// Some bytes came: the first tell a ClientHello from plain HTTP.
    pub(crate) started: bool,
    /// close_notify is queued, or the session failed: nothing more goes into it.
    pub(crate) closed: bool,
    /// The session failed: what the client still sends is dropped unread.
    pub(crate) failed: bool,
    /// The last read filled its buffer: the next asks for a whole record's worth.
    pub(crate) big_reads: bool,
}

/// A ciphertext read on an idle client connection: small (a request fits), grown to
/// [`TLS_READ`] while reads fill it.
pub(crate) const TLS_CLIENT_READ: usize = 2048;

/// Ciphertext read size: one TLS record and its overhead.
pub(crate) const TLS_READ: usize = 16 * 1024 + 512;
