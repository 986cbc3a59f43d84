//! Fingerprints: what a checkpoint was computed from.
//!
//! fingerprint = blake3(kind, code version, canonical config, stage seed, the input stages'
//! fingerprints in order, and the content hash of every external file the stage reads). Changing
//! any of them gives a new fingerprint, so the stage and everything downstream recompute; nothing
//! else (file order in the TOML, comments, paths of moved-but-identical files) does.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::checkpoint::ExternalInput;

/// Hex digits kept of the 256-bit hash (80 bits: collisions are not a practical concern).
const FINGERPRINT_HEX: usize = 20;

pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Fingerprint and hashed external inputs of every stage, in the pipeline's (topological) order.
pub fn compute(p: &Pipeline) -> Result<Vec<(String, Vec<ExternalInput>)>> {
    let mut out: Vec<(String, Vec<ExternalInput>)> = Vec::with_capacity(p.stages.len());
    for s in &p.stages {
        let mut externals = Vec::new();
        for path in s.def.external_inputs(&s.ctx).map_err(|e| e.context(format!("stage `{}`", s.name)))? {
            externals.push(ExternalInput { path: path.display().to_string(), blake3: hash_file(&path)? });
        }
        let doc = serde_json::json!({
            "kind": s.kind,
            "code_version": s.def.code_version(),
            "config": s.def.canonical_json(),
            "seed": s.ctx.seed,
            "inputs": s.inputs.iter().map(|&i| out[i].0.clone()).collect::<Vec<_>>(),
            // content only: a moved but identical file keeps the fingerprint
            "external": externals.iter().map(|e| e.blake3.clone()).collect::<Vec<_>>(),
        });
        let hash = blake3::hash(doc.to_string().as_bytes()).to_hex();
        out.push((hash[..FINGERPRINT_HEX].to_string(), externals));
    }
    Ok(out)
}
