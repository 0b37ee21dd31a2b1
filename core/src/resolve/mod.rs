//! Name resolution: the DNS cache every connection to a name goes through
//! ([`dns`], Envoy's `dns_cache_config`), and `"sd": "dns"` SRV lookups with a Sans-IO
//! DNS client and their cache ([`srv`]). Nothing here opens a socket: a driver sends
//! and receives the datagrams (or calls the system resolver) and feeds the answers in.

pub mod dns;
pub mod srv;
