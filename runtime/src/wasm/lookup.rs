//! `wasi:sockets/ip-name-lookup` answered by the node instead of the host's resolver:
//! wasmtime-wasi 48 resolves names with `tokio::net::lookup_host` and has no hook for
//! another resolver, so the interface is linked a second time over its own definition
//! (`allow_shadowing`) with this implementation. A guest's `getaddrinfo("backend")`
//! then gets the cluster's answer (the node's [`NameResolver`], which applies the pod's
//! search path) without a DNS packet. Only pods allowed `wasi:sockets` may look names
//! up; the others get `permanent-resolver-failure`, as the built-in lookup answers when
//! it is disallowed.
//!
//! wasmtime-wasi's `ResolveAddressStream` cannot be built outside it (a private
//! field), so the table holds [`AddressStream`] and the handles are re-typed by number;
//! the table checks the stored type on every access. Answers are computed at once, so a
//! stream is always ready.

use super::guest::ComponentState;
use std::net::IpAddr;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress};
use wasmtime_wasi::p2::{DynPollable, Network, Pollable, SocketError};

/// A pod's resolver: a name to its addresses (empty: it does not resolve).
pub type Resolve = dyn Fn(&str) -> Vec<IpAddr> + Send + Sync;

/// The addresses of one lookup, handed out one by one.
pub struct AddressStream(std::vec::IntoIter<IpAddr>);

#[wasmtime_wasi::async_trait]
impl Pollable for AddressStream {
    async fn ready(&mut self) {}
}

/// What the bindings see of a store: its table and how its pod resolves names.
pub struct LookupView<'a> {
    pub table: &'a mut ResourceTable,
    /// `None` for a pod without `wasi:sockets`.
    pub resolve: Option<&'a Resolve>,
}

struct NodeLookup;

impl HasData for NodeLookup {
    type Data<'a> = LookupView<'a>;
}

fn ours(stream: &Resource<ResolveAddressStream>) -> Resource<AddressStream> {
    Resource::new_borrow(stream.rep())
}

// `ip_name_lookup::Host` requires `network::Host` (the error conversion lives there).
impl network::Host for LookupView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        let error = self.table.get(&error)?;
        Ok(error.downcast_ref::<std::io::Error>().map(ErrorCode::from))
    }
}

impl network::HostNetwork for LookupView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(network)?;
        Ok(())
    }
}

/// The answer to one lookup of `name` (an address literal stands for itself).
pub fn lookup(name: &str, resolve: Option<&Resolve>) -> Result<Vec<IpAddr>, ErrorCode> {
    let Some(resolve) = resolve else {
        return Err(ErrorCode::PermanentResolverFailure);
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if name.is_empty() || name.len() > 253 || name.contains(['/', ' ', '\0']) {
        return Err(ErrorCode::InvalidArgument);
    }
    let addresses = resolve(&name.to_ascii_lowercase());
    if addresses.is_empty() {
        return Err(ErrorCode::NameUnresolvable);
    }
    Ok(addresses)
}

impl ip_name_lookup::Host for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        // The network handle is the capability, as in wasmtime-wasi's own lookup.
        self.table.get(&network)?;
        let addresses = lookup(&name, self.resolve)?;
        let stream = self.table.push(AddressStream(addresses.into_iter()))?;
        Ok(Resource::new_own(stream.rep()))
    }
}

impl HostResolveAddressStream for LookupView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let stream = self.table.get_mut(&ours(&stream))?;
        Ok(stream.0.next().map(IpAddress::from))
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.table, ours(&stream))
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<AddressStream>::new_own(stream.rep()))?;
        Ok(())
    }
}

/// Re-links `wasi:sockets/ip-name-lookup` over the definition
/// `wasmtime_wasi::p2::add_to_linker_async` made.
pub fn shadow_ip_name_lookup(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = ip_name_lookup::add_to_linker::<ComponentState, NodeLookup>(
        linker,
        ComponentState::lookup_view,
    );
    linker.allow_shadowing(false);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_names_and_refusals() {
        let table = |name: &str| match name {
            "backend" => vec!["10.43.0.20".parse().unwrap()],
            _ => vec![],
        };
        let resolve: &Resolve = &table;
        assert_eq!(
            lookup("Backend", Some(resolve)).unwrap(),
            vec!["10.43.0.20".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            lookup("[fd00::1]", Some(resolve)).unwrap(),
            vec!["fd00::1".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(
            lookup("nowhere", Some(resolve)),
            Err(ErrorCode::NameUnresolvable)
        ));
        assert!(matches!(
            lookup("", Some(resolve)),
            Err(ErrorCode::InvalidArgument)
        ));
        assert!(matches!(
            lookup(&"a".repeat(300), Some(resolve)),
            Err(ErrorCode::InvalidArgument)
        ));
        assert!(matches!(
            lookup("backend", None),
            Err(ErrorCode::PermanentResolverFailure)
        ));
    }
}
