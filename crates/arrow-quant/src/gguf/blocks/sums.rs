//! Quality sums of a row against its reconstruction, vectorised: the default of
//! [`BlockCodec::quantize_row_with_sums`](super::BlockCodec::quantize_row_with_sums).

use crate::codec::driver::QualitySums;
use crate::simd::multiversion;

multiversion! {
    /// The quality sums of a row `x` and its reconstruction `y`: f32 sums over 64-element pieces in sixteen lanes
    /// (so they vectorise), added up in f64 piece by piece.
    pub(crate) fn row_sums(x: &[f32], y: &[f32]) -> QualitySums {
        let mut sums = QualitySums::default();
        for (a, b) in x.chunks(64).zip(y.chunks(64)) {
            let mut acc = [[0f32; 16]; 4];
            let mut pairs = a.chunks_exact(16).zip(b.chunks_exact(16));
            for (ca, cb) in &mut pairs {
                for i in 0..16 {
                    let (u, v) = (ca[i], cb[i]);
                    let e = u - v;
                    acc[0][i] += u * u;
                    acc[1][i] += e * e;
                    acc[2][i] += u * v;
                    acc[3][i] += v * v;
                }
            }
            let tail = a.len() / 16 * 16;
            for (i, (&u, &v)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
                let e = u - v;
                acc[0][i] += u * u;
                acc[1][i] += e * e;
                acc[2][i] += u * v;
                acc[3][i] += v * v;
            }
            let total = |lanes: &[f32; 16]| f64::from(lanes.iter().sum::<f32>());
            sums.add(QualitySums {
                xx: total(&acc[0]),
                ee: total(&acc[1]),
                xy: total(&acc[2]),
                yy: total(&acc[3]),
            });
        }
        sums
    }
}
