//! The DNS add-on (issue 9, in progress): the cluster zone of the Kubernetes DNS-based
//! service discovery specification 1.1.0 as a pure snapshot of Services, EndpointSlices
//! and pods ([`zone`]), and the server ([`server`]: UDP with EDNS0-sized truncation and
//! TCP, messages read and written with hickory-proto — the only code that knows
//! hickory — names outside the zones relayed upstream). The informer loop, the node
//! integration on the cluster DNS address and the `kube-dns` Service follow.

pub mod forward;
pub mod run;
pub mod server;
pub mod zone;
