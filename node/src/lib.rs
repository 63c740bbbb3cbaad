//! Node agent: pod sync, probes, service proxy and logs (built in a later issue).
