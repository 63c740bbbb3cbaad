//! Cluster-level integration tests, in one test binary: the real API server on a
//! loopback port with sled on a temp dir, real HTTP, the real `skiff` binary and the real
//! `kubectl` on PATH. Tests whose clusters run pods (and so hand out pod and Service
//! addresses) run inside network namespaces of their own (`netns`).

mod allocations;
mod api;
mod bootstrap;
mod cli;
mod controllers;
mod crash;
mod dns;
mod group_deletes;
mod harness;
mod hostile_input;
mod ingress;
mod ingress_api;
mod kubectl;
mod netns;
mod quantities;
mod runtimeclass;
mod security;
mod services;
mod wasm;
