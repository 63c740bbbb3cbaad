//! The DNS add-on (issue 9, in progress): the cluster zone of the Kubernetes DNS-based
//! service discovery specification 1.1.0 as a pure snapshot of Services, EndpointSlices
//! and pods ([`zone`]). The server on hickory (the only code that will know hickory),
//! forwarding and the node integration follow.

pub mod zone;
