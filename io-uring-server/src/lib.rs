//! `sluice-uring` will hold the thread-per-core driver: one pinned monoio shard per
//! core (io_uring, falling back to epoll), each with its own SO_REUSEPORT listener and
//! backend pools, driving the Sans-IO state machines of `sluice-core`. Not written yet.
