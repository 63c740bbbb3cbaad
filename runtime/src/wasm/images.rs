//! The node's image store: image bytes kept content-addressed under
//! `DATA_DIR/images/sha256-<hex>.wasm`, and the references that resolved to them.
//!
//! Reference schemes:
//! - `file:///abs/path/module.wasm` or `/abs/path/module.wasm`: a file on the node.
//! - anything else (`hello:v1`, `hello@sha256:<hex>`): asked of the [`ImageSource`]
//!   (images pushed into the cluster with `skiff push`); a `@sha256:` digest in the
//!   reference is verified against the bytes.

use crate::{ImageRef, ImageSource, ImageStatus, RuntimeError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Images bigger than this are refused (compiling is guest-controlled work).
pub const MAX_IMAGE_BYTES: usize = 256 * 1024 * 1024;

/// An image source that serves nothing: only node-local paths resolve.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoImageSource;

impl ImageSource for NoImageSource {
    async fn fetch(&self, _reference: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
        Ok(None)
    }
}

pub struct ImageStore<S> {
    dir: PathBuf,
    source: S,
    /// Reference -> resolved image, for references pulled by this process.
    resolved: Mutex<HashMap<String, ImageRef>>,
    /// Node-local files already hashed, by path, with the size and mtime they had; a pod
    /// start then costs a `stat`, not a read and a hash.
    local: Mutex<HashMap<String, (u64, std::time::SystemTime, ImageRef)>>,
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl<S: ImageSource> ImageStore<S> {
    pub fn new(dir: PathBuf, source: S) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::Io(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ImageStore {
            dir,
            source,
            resolved: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
        })
    }

    /// The file holding the bytes of `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.wasm", digest.replace(':', "-")))
    }

    pub async fn pull(&self, reference: &str) -> Result<ImageRef, RuntimeError> {
        let pull_error = |reason: String| RuntimeError::ImagePull {
            image: reference.to_string(),
            reason,
        };
        let local = reference
            .strip_prefix("file://")
            .or_else(|| reference.starts_with('/').then_some(reference));
        let bytes = match local {
            Some(path) => {
                let meta =
                    std::fs::metadata(path).map_err(|e| pull_error(format!("{path}: {e}")))?;
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                let known = self
                    .local
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(path)
                    .cloned();
                if let Some((len, mtime, image)) = known {
                    if len == meta.len()
                        && mtime == modified
                        && self.blob_path(&image.digest).exists()
                    {
                        return Ok(ImageRef {
                            reference: reference.to_string(),
                            ..image
                        });
                    }
                }
                if meta.len() as usize > MAX_IMAGE_BYTES {
                    return Err(pull_error(format!(
                        "image is larger than {MAX_IMAGE_BYTES} bytes"
                    )));
                }
                std::fs::read(path).map_err(|e| pull_error(format!("{path}: {e}")))?
            }
            None => {
                if let Some(found) = self.cached(reference) {
                    return Ok(found);
                }
                self.source
                    .fetch(reference)
                    .await?
                    .ok_or_else(|| pull_error("image not found: use a file:// path on the node or `skiff push` it into the cluster".into()))?
            }
        };
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(pull_error(format!(
                "image is larger than {MAX_IMAGE_BYTES} bytes"
            )));
        }
        let digest = digest_of(&bytes);
        if let Some((_, pinned)) = reference.split_once('@') {
            if pinned != digest {
                return Err(pull_error(format!(
                    "content digest {digest} does not match the reference"
                )));
            }
        }
        let blob = self.blob_path(&digest);
        if !blob.exists() {
            let tmp = blob.with_extension("tmp");
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &blob))
                .map_err(|e| RuntimeError::Io(format!("cannot store image: {e}")))?;
        }
        let image = ImageRef {
            reference: reference.to_string(),
            digest,
        };
        self.resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(reference.to_string(), image.clone());
        if let Some(path) = local {
            if let Ok(meta) = std::fs::metadata(path) {
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                self.local
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path.to_string(), (meta.len(), modified, image.clone()));
            }
        }
        Ok(image)
    }

    /// A non-local reference pulled before, whose bytes are still on disk.
    fn cached(&self, reference: &str) -> Option<ImageRef> {
        let found = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()?;
        self.blob_path(&found.digest).exists().then_some(found)
    }

    pub fn status(&self, reference: &str) -> Option<ImageStatus> {
        let image = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()?;
        let size_bytes = std::fs::metadata(self.blob_path(&image.digest)).ok()?.len();
        Some(ImageStatus { image, size_bytes })
    }

    pub fn remove(&self, reference: &str) -> Result<(), RuntimeError> {
        let removed = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(reference);
        if let Some(image) = removed {
            let still_used = self
                .resolved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|i| i.digest == image.digest);
            if !still_used {
                let _ = std::fs::remove_file(self.blob_path(&image.digest));
            }
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<ImageStatus> {
        let references: Vec<String> = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        references.iter().filter_map(|r| self.status(r)).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
