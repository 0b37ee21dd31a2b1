//! The client's TLS session on an HTTPS listener: ciphertext in, plaintext into the
//! codec's input; a failed handshake answered with rustls' alert and logged.

use super::*;

impl<'g> Connection<'g> {
    /// Ciphertext came from the client (or its close): decrypted into the input, as a
    /// plain read would have put it there.
    pub(super) fn tls_client_read(&mut self, mut buf: Vec<u8>, result: io::Result<usize>) {
        self.reading = false;
        self.ready = false;
        let Some(tls) = self.tls.as_deref_mut() else { return };
        let n = result.map_or(0, |n| n.min(buf.len()));
        self.eof |= n == 0;
        tls.side.big_reads = n > 0 && n >= buf.capacity();
        if tls.side.failed {
            buf.clear();
            tls.cipher_in = buf;
            self.hungry = false;
            return;
        }
        if !tls.side.started && n > 0 {
            tls.side.started = true;
            // A TLS connection opens with a handshake record (22); a request line with
            // a method's letters.
            if buf[0] != 0x16 && buf[0].is_ascii_alphabetic() {
                self.input.prepare().extend_from_slice(&buf[..n]);
                self.tls = None;
                self.plain_on_tls = true;
                self.hungry = false;
                return;
            }
        }
        let decrypted = tls.decrypt(&buf[..n], &mut self.input);
        buf.clear();
        tls.cipher_in = buf;
        match decrypted {
            Ok(d) => {
                self.eof |= d.closed;
                // Only handshake or partial records: nothing for the codec yet, read on.
                self.hungry = !d.got && !self.eof;
            }
            Err(e) => {
                let stage = if tls.conn.is_handshaking() { "TLS handshake failed" } else { "TLS session failed" };
                self.tls_broken(format!("{stage}: {e}"));
            }
        }
    }

    /// The client's TLS session failed: the alert rustls queued goes out, then the
    /// connection closes as after an error answer (write side shut, what the client
    /// still sends read and dropped for a while: closing on unread bytes would reset
    /// the connection and could destroy the alert). A request under way is cut, as
    /// when the client goes.
    pub(super) fn tls_broken(&mut self, reason: String) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.side.closed = true;
            tls.side.failed = true;
        }
        self.hungry = false;
        self.queue.push_back(Output::Log(Log::Tls { peer: self.peer, reason }));
        match self.state {
            State::Head(_) | State::Flush(_) | State::Closing => {
                self.answered = true;
                self.state = State::Closing;
            }
            State::Linger { .. } | State::Closed => {}
            _ => self.abort(),
        }
    }
}
