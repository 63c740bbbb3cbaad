//! Container runtime interface and its wasmtime and containerd backends (built in a later issue).
