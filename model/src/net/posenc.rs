//! Fixed sinusoidal position encodings (1-D for tokens, 2-D for the feature map).
//!
//! They are computed on the host in f64 and copied over: the tables are tiny, and host math
//! makes them bit-identical on every device and run.

use tch::{Device, Tensor};

/// Encodings of positions `start..start + n` in `dim` channels, as an `[n, dim]` f32 tensor.
///
/// Channel `k` uses frequency `10000^(-2⌊k/2⌋/dim)`; even channels take the sine, odd ones the
/// cosine (the layout of "Attention is all you need").
pub fn sinusoid(start: i64, n: i64, dim: i64, device: Device) -> Tensor {
    // One power per channel, not per cell: reading a line builds these tables at every call.
    let wavelengths: Vec<f64> = (0..dim)
        .map(|k| 10000f64.powf((2 * (k / 2)) as f64 / dim as f64))
        .collect();
    let mut table = Vec::with_capacity((n.max(0) * dim.max(0)) as usize);
    for pos in start..start + n {
        for (k, wavelength) in wavelengths.iter().enumerate() {
            let angle = pos as f64 / wavelength;
            table.push(if k % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    Tensor::from_slice(&table).view([n, dim]).to_device(device)
}

/// 2-D encoding of an `h × w` grid in `dim` channels, as a `[dim, h, w]` tensor: the first half
/// of the channels encode the row, the rest the column, so every cell gets a distinct code and
/// the decoder can attend by row and column separately.
pub fn grid(h: i64, w: i64, dim: i64, device: Device) -> Tensor {
    let row_dim = dim / 2;
    let col_dim = dim - row_dim;
    let rows = sinusoid(0, h, row_dim, device)
        .tr()
        .unsqueeze(2)
        .expand([row_dim, h, w], false);
    let cols = sinusoid(0, w, col_dim, device)
        .tr()
        .unsqueeze(1)
        .expand([col_dim, h, w], false);
    Tensor::cat(&[rows, cols], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_matches_the_formula() {
        let t = sinusoid(3, 2, 6, Device::Cpu);
        assert_eq!(t.size(), [2, 6]);
        let v = |p: i64, k: i64| t.double_value(&[p, k]);
        assert!((v(0, 0) - 3f64.sin()).abs() < 1e-6);
        assert!((v(0, 1) - 3f64.cos()).abs() < 1e-6);
        assert!((v(1, 2) - (4.0 / 10000f64.powf(2.0 / 6.0)).sin()).abs() < 1e-6);
    }

    #[test]
    fn grid_codes_rows_then_columns() {
        let g = grid(2, 3, 8, Device::Cpu);
        assert_eq!(g.size(), [8, 2, 3]);
        // Row channels are constant along a row, column channels along a column.
        let row_part = g.narrow(0, 0, 4);
        let col_part = g.narrow(0, 4, 4);
        assert!(row_part.select(2, 0).equal(&row_part.select(2, 2)));
        assert!(col_part.select(1, 0).equal(&col_part.select(1, 1)));
        assert!(!row_part.select(1, 0).equal(&row_part.select(1, 1)));
    }
}
