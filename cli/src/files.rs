//! Reading manifests: a file, every `.yaml`/`.yml`/`.json` file of a directory, or
//! standard input, each possibly holding several YAML documents or a `List`.

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// One object from a manifest, with where it came from for messages.
#[derive(Debug)]
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

pub fn read_manifests(path: &str) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        parse_documents("<stdin>", &text, &mut out)?;
        return Ok(out);
    }
    let p = Path::new(path);
    let meta = std::fs::metadata(p).with_context(|| format!("the path {path:?} does not exist"))?;
    if meta.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(p)
            .with_context(|| format!("cannot read directory {path}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                matches!(
                    f.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            parse_documents(&f.display().to_string(), &text, &mut out)?;
        }
    } else {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {path}"))?;
        parse_documents(path, &text, &mut out)?;
    }
    Ok(out)
}

fn parse_documents(source: &str, text: &str, out: &mut Vec<Manifest>) -> Result<()> {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).with_context(|| {
            format!("{source}: document {} is not valid YAML or JSON", index + 1)
        })?;
        match value {
            Value::Null => continue,
            Value::Object(_) => {}
            _ => bail!("{source}: document {} is not an object", index + 1),
        }
        if value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"))
        {
            for item in value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                out.push(Manifest {
                    source: source.to_string(),
                    object: item,
                });
            }
            continue;
        }
        out.push(Manifest {
            source: source.to_string(),
            object: value,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let mut out = Vec::new();
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n";
        parse_documents("t", text, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].object["kind"], "ConfigMap");
        assert!(parse_documents("t", "- 1\n", &mut Vec::new()).is_err());
        assert!(parse_documents("t", "a: [", &mut Vec::new()).is_err());
    }
}
