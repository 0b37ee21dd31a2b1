//! `sluice-tokio` will hold the portable driver: the same `sluice-core` state machines
//! on tokio, for hosts without io_uring and for embedding in a tokio application.
//! Not written yet.
