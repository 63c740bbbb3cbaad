//! Images pushed into the cluster with `skiff push NAME:TAG`: wasm modules stored
//! content-addressed in the store's blob tree, with a tag pointing at each digest. Node
//! agents fetch them by reference through the API server and verify the digest.

use crate::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use skiff_api::status::ApiError;

/// The largest image `skiff push` accepts.
pub const MAX_PUSH_BYTES: usize = 64 * 1024 * 1024;

/// A parsed image reference: `name:tag` or `name@sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag { name: String, tag: String },
    Digest { name: String, digest: String },
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, ApiError> {
        let bad = || {
            ApiError::bad_request(format!(
                "invalid image reference {text:?}: use NAME:TAG or NAME@sha256:<hex> (lower-case name, tag of letters, digits, '.', '_', '-')"
            ))
        };
        if let Some((name, digest)) = text.split_once('@') {
            let hex = digest.strip_prefix("sha256:").ok_or_else(bad)?;
            if !valid_name(name) || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            return Ok(Reference::Digest {
                name: name.into(),
                digest: digest.to_ascii_lowercase(),
            });
        }
        let (name, tag) = text.rsplit_once(':').ok_or_else(bad)?;
        if !valid_name(name) || !valid_tag(tag) {
            return Err(bad());
        }
        Ok(Reference::Tag {
            name: name.into(),
            tag: tag.into(),
        })
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Failed(m) => ApiError::service_unavailable(m),
        other => ApiError::internal(other.to_string()),
    }
}

/// Whether the bytes are a WebAssembly core module or component.
fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

/// Stores an image under `name:tag`; returns its digest.
pub async fn push(store: &Store, reference: &str, bytes: Vec<u8>) -> Result<String, ApiError> {
    let Reference::Tag { name, tag } = Reference::parse(reference)? else {
        return Err(ApiError::bad_request(
            "push to NAME:TAG; the digest is computed by the server",
        ));
    };
    if !is_wasm(&bytes) {
        return Err(ApiError::bad_request(
            "the pushed file is not a WebAssembly module or component",
        ));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    store.put_blob(&digest, bytes).await.map_err(store_error)?;
    // The tag is written after its blob, so a tag never points at a missing blob.
    store
        .put_blob(&format!("tag/{name}:{tag}"), digest.clone().into_bytes())
        .await
        .map_err(store_error)?;
    Ok(digest)
}

/// Finds an image by reference: its digest and bytes.
pub async fn fetch(store: &Store, reference: &str) -> Result<(String, Vec<u8>), ApiError> {
    let not_found = || ApiError::new(404, "NotFound", format!("image {reference:?} not found"));
    let digest = match Reference::parse(reference)? {
        Reference::Digest { digest, .. } => digest,
        Reference::Tag { name, tag } => {
            let raw = store
                .get_blob(&format!("tag/{name}:{tag}"))
                .await
                .map_err(store_error)?
                .ok_or_else(not_found)?;
            String::from_utf8(raw).map_err(|_| ApiError::internal("a tag record is damaged"))?
        }
    };
    let bytes = store
        .get_blob(&digest)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)?;
    Ok((digest, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(
            Reference::parse("hello:v1").unwrap(),
            Reference::Tag {
                name: "hello".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(
            Reference::parse("team/app:1.0").unwrap(),
            Reference::Tag {
                name: "team/app".into(),
                tag: "1.0".into()
            }
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            Reference::parse(&format!("app@{digest}")).unwrap(),
            Reference::Digest { .. }
        ));
        for bad in [
            "hello",
            "Hello:v1",
            "a:",
            ":v1",
            "a@sha256:xyz",
            "a:b c",
            "../x:1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn pushed_images_come_back_by_tag_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let module = b"\0asm\x01\0\0\0".to_vec();
        let digest = push(&store, "m:1", module.clone()).await.unwrap();
        assert_eq!(
            fetch(&store, "m:1").await.unwrap(),
            (digest.clone(), module.clone())
        );
        assert_eq!(
            fetch(&store, &format!("m@{digest}")).await.unwrap().1,
            module
        );
        assert_eq!(fetch(&store, "m:2").await.unwrap_err().code, 404);
        assert_eq!(
            push(&store, "m:1", b"#!/bin/sh".to_vec())
                .await
                .unwrap_err()
                .code,
            400
        );
        // Nothing revisioned changed: blobs are outside the object store.
        assert_eq!(store.revision(), 0);
    }
}
