//! The DNS add-on: the cluster zone of the Kubernetes DNS-based service discovery
//! specification 1.1.0 as a pure snapshot of Services, EndpointSlices and pods
//! ([`zone`]); the server ([`server`]: UDP with EDNS0-sized truncation, batched through
//! [`udp`], and TCP; messages read and written with hickory-proto — the only code that
//! knows hickory); names outside the zone relayed upstream with a cache ([`forward`]);
//! and the running add-on on shared informers ([`run`]), node-local on the cluster DNS
//! address of every node or on its own as `skiff dns`.

pub mod forward;
pub mod run;
pub mod server;
pub mod udp;
pub mod zone;
