//! Images pushed into the cluster (`skiff push`), fetched through the API server
//! (`/skiff/v1/images/<reference>`) and checked against the digest the server reports.

use skiff_client::Client;
use skiff_runtime::{ImageSource, RuntimeError};

/// An [`ImageSource`] backed by the API server.
#[derive(Debug, Clone)]
pub struct ApiImageSource {
    pub client: Client,
}

/// The header the API server sends the content digest in.
pub const DIGEST_HEADER: &str = "Skiff-Content-Digest";

impl ImageSource for ApiImageSource {
    async fn fetch(&self, reference: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        let path = format!("/skiff/v1/images/{reference}");
        let fetched = self
            .client
            .get_bytes(&path, DIGEST_HEADER)
            .await
            .map_err(|e| RuntimeError::ImagePull {
                image: reference.to_string(),
                reason: e.to_string(),
            })?;
        let Some((digest, bytes)) = fetched else {
            return Ok(None);
        };
        let actual = skiff_runtime::wasm::images::digest_of(&bytes);
        match digest {
            Some(expected) if expected == actual => Ok(Some(bytes)),
            Some(expected) => Err(RuntimeError::ImagePull {
                image: reference.to_string(),
                reason: format!(
                    "content digest {actual} does not match the {expected} the server announced"
                ),
            }),
            None => Err(RuntimeError::ImagePull {
                image: reference.to_string(),
                reason: "the server sent no content digest to verify".into(),
            }),
        }
    }
}
