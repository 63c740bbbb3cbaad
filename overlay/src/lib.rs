//! QUIC overlay between nodes: mTLS and pod IP routing (built in a later issue).
