//! Named tensors to and from the safetensors format, so that other tools (Python's
//! `safetensors.torch.load_file`, for one) can read textrec weights.
//!
//! Writing is done here rather than by the `safetensors` crate because its header keeps the
//! free-form metadata in a `HashMap`, whose order (and so the file's bytes) changes from run to
//! run; the files written here are a pure function of the tensors and metadata: tensors sorted
//! by name, JSON keys sorted. Reading goes through the `safetensors` crate, which validates
//! the header and offsets, so corrupt input is an error and never a panic.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors};
use tch::{nn, Device, Kind, Tensor};

#[cfg(target_endian = "big")]
compile_error!("safetensors stores little-endian data; textrec copies tensor bytes as they are");

fn dtype_name(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Bool => "BOOL",
        Kind::Uint8 => "U8",
        Kind::Int8 => "I8",
        Kind::Int16 => "I16",
        Kind::Int => "I32",
        Kind::Int64 => "I64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        other => bail!("tensors of kind {other:?} cannot be stored in safetensors"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        other => bail!("dtype {other:?} is not supported"),
    })
}

/// Serialize named tensors (any device) as a safetensors file. Tensors are stored in name
/// order; the same tensors and metadata always give the same bytes. Duplicate names are an
/// error.
pub fn to_safetensors(
    named: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Tensor)> = named.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("tensor name `{}` appears twice", w[0].0);
    }

    let mut header = serde_json::Map::new();
    if let Some(meta) = metadata {
        let meta: BTreeMap<String, String> = meta.into_iter().collect();
        header.insert("__metadata__".into(), serde_json::to_value(meta)?);
    }
    // The header first (every size is known from the shapes), then each tensor's data copied
    // straight into its place: one buffer, no second copy of the data on the way.
    let mut placed = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for (name, tensor) in sorted {
        if name == "__metadata__" {
            bail!("`__metadata__` is reserved and cannot name a tensor");
        }
        let dtype = dtype_name(tensor.kind()).with_context(|| format!("tensor `{name}`"))?;
        let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": tensor.size(),
                "data_offsets": [offset, offset + len],
            }),
        );
        placed.push((name, tensor, offset..offset + len));
        offset += len;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // Readers that map the file expect the data to start 8-byte aligned; spaces are the
    // format's padding.
    header.resize(header.len().div_ceil(8) * 8, b' ');

    let start = 8 + header.len();
    let mut out = vec![0u8; start + offset];
    out[..8].copy_from_slice(&(header.len() as u64).to_le_bytes());
    out[8..start].copy_from_slice(&header);
    for (name, tensor, range) in placed {
        let cpu = tensor.to_device(Device::Cpu).contiguous();
        let numel = cpu.numel();
        cpu.f_copy_data_u8(&mut out[start + range.start..start + range.end], numel)
            .with_context(|| format!("reading tensor `{name}`"))?;
    }
    Ok(out)
}

/// Parse a safetensors file into named tensors on `device`, sorted by name. Any corruption
/// (truncation, bad header, offsets outside the data) is an error.
pub fn from_safetensors(bytes: &[u8], device: Device) -> Result<Vec<(String, Tensor)>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e:?}"))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).with_context(|| format!("tensor `{name}`"))?;
        let shape = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .with_context(|| format!("tensor `{name}`: shape too large"))?;
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("tensor `{name}`"))?
            .to_device(device);
        out.push((name, tensor));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The free-form `__metadata__` of a safetensors file (empty when it has none). A corrupt
/// header is an error.
pub fn safetensors_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("not a valid safetensors file: {e:?}"))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Every variable of `vs` (trainable or not, e.g. BatchNorm running statistics), sorted by
/// name, as safetensors bytes. Bit-exact: loading them back restores identical values.
pub fn save_varstore(vs: &nn::VarStore) -> Result<Vec<u8>> {
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    to_safetensors(
        &named,
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
    )
}

/// Load safetensors bytes into the variables of `vs`, which must match exactly: the error
/// lists every missing, unexpected, shape- or dtype-mismatched tensor, and on error no
/// variable has been changed.
pub fn load_varstore(vs: &mut nn::VarStore, bytes: &[u8]) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    load_into(&vars, bytes, "weights do not fit the model")
}

/// Copy the tensors of safetensors bytes into `targets` (shallow clones of the tensors to
/// write, e.g. a `VarStore`'s variables or an average of them), which must match by name,
/// shape and dtype. The error, headed by `what`, lists every missing, unexpected, shape- or
/// dtype-mismatched tensor, and on error no target has been changed.
pub fn load_into(targets: &BTreeMap<String, Tensor>, bytes: &[u8], what: &str) -> Result<()> {
    let loaded: BTreeMap<String, Tensor> =
        from_safetensors(bytes, Device::Cpu)?.into_iter().collect();

    let mut problems = Vec::new();
    for (name, target) in targets {
        match loaded.get(name) {
            None => problems.push(format!("missing tensor `{name}` {:?}", target.size())),
            Some(t) if t.size() != target.size() => problems.push(format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                t.size(),
                target.size()
            )),
            Some(t) if t.kind() != target.kind() => problems.push(format!(
                "tensor `{name}` has dtype {:?}, expected {:?}",
                t.kind(),
                target.kind()
            )),
            Some(_) => {}
        }
    }
    for name in loaded.keys().filter(|n| !targets.contains_key(*n)) {
        problems.push(format!("unexpected tensor `{name}`"));
    }
    if !problems.is_empty() {
        bail!("{what}: {}", problems.join("; "));
    }
    tch::no_grad(|| {
        for (name, target) in targets {
            target
                .shallow_clone()
                .f_copy_(&loaded[name])
                .with_context(|| format!("copying tensor `{name}`"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(seed: i64, d: i64) -> nn::VarStore {
        let _rng = crate::net::global_rng_lock();
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = nn::linear(&root / "fc", 3, d, Default::default());
        let _ = nn::batch_norm1d(&root / "bn", d, Default::default());
        let _ = root.var("half", &[2, 2], nn::Init::Const(0.5));
        vs
    }

    fn assert_same(a: &nn::VarStore, b: &nn::VarStore) {
        let bv = b.variables();
        for (name, t) in a.variables() {
            assert!(t.equal(&bv[&name]), "{name} differs");
        }
    }

    #[test]
    fn varstore_round_trip_is_bit_exact() {
        let a = store(1, 4);
        let bytes = save_varstore(&a).unwrap();
        assert_eq!(bytes, save_varstore(&a).unwrap(), "same store, same bytes");
        let mut b = store(2, 4);
        assert!(!a.variables()["fc.weight"].equal(&b.variables()["fc.weight"]));
        load_varstore(&mut b, &bytes).unwrap();
        assert_same(&a, &b);
        assert_eq!(save_varstore(&b).unwrap(), bytes);
    }

    #[test]
    fn file_is_standard_safetensors() {
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 1e-8, 7.0]).view([2, 3]);
        let ids = Tensor::from_slice(&[1i64, 2, 3]);
        let meta = HashMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]);
        let bytes = to_safetensors(
            &[("w".into(), t.shallow_clone()), ("ids".into(), ids)],
            Some(meta),
        )
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("w").unwrap();
        assert_eq!(w.dtype(), Dtype::F32);
        assert_eq!(w.shape(), [2, 3]);
        assert_eq!(&w.data()[..4], 1.5f32.to_le_bytes());
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["b"], "2");
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);

        let back = from_safetensors(&bytes, Device::Cpu).unwrap();
        assert_eq!(
            back.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["ids", "w"]
        );
        assert!(back[1].1.equal(&t));
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        let bytes = save_varstore(&store(1, 4)).unwrap();
        for cut in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                from_safetensors(&bytes[..cut], Device::Cpu).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(from_safetensors(&longer, Device::Cpu).is_err());
        let mut garbage = bytes.clone();
        garbage[8] = b'x';
        assert!(from_safetensors(&garbage, Device::Cpu).is_err());
        let mut huge = bytes;
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(from_safetensors(&huge, Device::Cpu).is_err());
        let dup = |_| {
            (
                "x".to_string(),
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            )
        };
        assert!(to_safetensors(&(0..2).map(dup).collect::<Vec<_>>(), None).is_err());
    }

    #[test]
    fn mismatches_are_named_and_nothing_is_loaded() {
        let src = store(1, 4);
        let mut named: Vec<(String, Tensor)> = src.variables().into_iter().collect();
        named.retain(|(n, _)| n != "bn.running_mean");
        named.push((
            "extra".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ));
        let bytes = to_safetensors(&named, None).unwrap();
        let mut dst = store(2, 4);
        let before = save_varstore(&dst).unwrap();
        let err = format!("{:#}", load_varstore(&mut dst, &bytes).unwrap_err());
        assert!(err.contains("missing tensor `bn.running_mean`"), "{err}");
        assert!(err.contains("unexpected tensor `extra`"), "{err}");
        assert_eq!(
            save_varstore(&dst).unwrap(),
            before,
            "a failed load must not change weights"
        );

        let mut wider = store(2, 5);
        let err = format!(
            "{:#}",
            load_varstore(&mut wider, &save_varstore(&src).unwrap()).unwrap_err()
        );
        assert!(
            err.contains("`fc.weight` has shape [4, 3], expected [5, 3]"),
            "{err}"
        );
    }
}
