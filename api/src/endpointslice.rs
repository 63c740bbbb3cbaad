//! What the consumers of EndpointSlices (the endpoints controller, the service proxy,
//! the DNS add-on) agree on: the label that ties a slice to its Service.

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The (namespace, Service name) a slice belongs to, if it names one.
pub fn service_of(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let namespace = slice.metadata.namespace.as_deref()?;
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((namespace, service.as_str()))
}
