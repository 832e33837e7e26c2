//! Arrow in and out: layers read in place, every schema error, result batches equal to the tensor path.

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_quant::arrow::output::RowEncoding;
use arrow_quant::arrow::{
    dequantize_to_batch, quantize_to_batch, read_layers, read_results, tensors_to_batch,
};
use arrow_quant::{quantize_tensor, FlatLayout, Layout, QuantConfig, QuantError, TensorData};
use std::sync::Arc;

fn weights(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0)
                - 0.5
        })
        .collect()
}

/// A test row: layer name, weights, optional shape.
type Row<'a> = (&'a str, Vec<f32>, Option<Vec<i64>>);

fn batch(rows: &[Row<'_>]) -> RecordBatch {
    let mut names = StringBuilder::new();
    let mut w = ListBuilder::new(Float32Builder::new());
    let mut shapes = ListBuilder::new(Int64Builder::new());
    for (name, values, shape) in rows {
        names.append_value(name);
        w.values().append_slice(values);
        w.append(true);
        match shape {
            Some(s) => {
                shapes.values().append_slice(s);
                shapes.append(true);
            }
            None => shapes.append(false),
        }
    }
    RecordBatch::try_from_iter([
        ("layer_name", Arc::new(names.finish()) as ArrayRef),
        ("weights", Arc::new(w.finish()) as ArrayRef),
        ("shape", Arc::new(shapes.finish()) as ArrayRef),
    ])
    .unwrap()
}

#[test]
fn layers_are_borrowed_and_round_trip_equals_the_tensor_path() {
    let a = weights(64 * 96, 1);
    let b = weights(300, 2);
    let input = batch(&[("a", a.clone(), Some(vec![64, 96])), ("b", b.clone(), None)]);
    let layers = read_layers(std::slice::from_ref(&input)).unwrap();
    assert_eq!(layers[0].shape, vec![64, 96]);
    assert_eq!(layers[1].shape, vec![300]);
    if let TensorData::F32(slice) = layers[0].data {
        assert_eq!(slice, a.as_slice());
    } else {
        panic!("f32 expected");
    }
    let views: Vec<_> = layers.iter().map(|l| l.view().unwrap()).collect();
    let cfg = QuantConfig::default();
    let result = quantize_to_batch(&views, &cfg).unwrap();
    assert_eq!(result.num_rows(), 2);
    let rows = read_results(std::slice::from_ref(&result)).unwrap();
    for (row, view) in rows.iter().zip(&views) {
        let direct = quantize_tensor(view, &cfg).unwrap();
        assert_eq!(row.data, direct.data.as_slice());
        assert_eq!(
            row.view().unwrap().dequantize().unwrap(),
            direct.view().dequantize().unwrap()
        );
        assert_eq!(row.quality, direct.quality);
    }
    let deq = dequantize_to_batch(&rows).unwrap();
    assert_eq!(deq.num_rows(), 2);
    assert_eq!(deq.schema().field(1).name(), "weights");
}

#[test]
fn fixed_size_list_and_symmetric_rows() {
    let mut w = FixedSizeListBuilder::new(Float32Builder::new(), 128);
    let mut names = StringBuilder::new();
    for i in 0..3 {
        w.values().append_slice(&weights(128, i));
        w.append(true);
        names.append_value(format!("l{i}"));
    }
    let input = RecordBatch::try_from_iter([
        ("layer_name", Arc::new(names.finish()) as ArrayRef),
        ("weights", Arc::new(w.finish()) as ArrayRef),
    ])
    .unwrap();
    let layers = read_layers(std::slice::from_ref(&input)).unwrap();
    let views: Vec<_> = layers.iter().map(|l| l.view().unwrap()).collect();
    let cfg = QuantConfig {
        layout: Layout::Flat(FlatLayout {
            symmetric: true,
            ..FlatLayout::default()
        }),
        ..QuantConfig::default()
    };
    let result = quantize_to_batch(&views, &cfg).unwrap();
    let rows = read_results(std::slice::from_ref(&result)).unwrap();
    assert!(rows.iter().all(|r| r.view().unwrap().symmetric()
        && matches!(
            r.encoding,
            RowEncoding::Quantized {
                symmetric: true,
                ..
            }
        )));
    // Copying the rows into a new batch gives the same bytes.
    let metas: Vec<_> = rows.iter().map(|r| r.meta()).collect();
    let views: Vec<_> = rows.iter().map(|r| r.view().unwrap()).collect();
    let copy = tensors_to_batch(&metas, &views).unwrap();
    let again = read_results(std::slice::from_ref(&copy)).unwrap();
    assert_eq!(again[2].data, rows[2].data);
}

fn error_of(b: RecordBatch) -> String {
    match read_layers(std::slice::from_ref(&b)) {
        Err(e @ QuantError::Column { .. }) => e.to_string(),
        other => panic!("expected a column error, got {other:?}"),
    }
}

#[test]
fn schema_errors_name_column_type_and_row() {
    let ok = batch(&[("a", weights(8, 0), Some(vec![2, 4]))]);
    let wrong_shape = batch(&[("a", weights(8, 0), Some(vec![3, 3]))]);
    assert!(error_of(wrong_shape).contains("shape [3, 3] holds 9 elements but the row has 8"));
    let dup = batch(&[("a", weights(8, 0), None), ("a", weights(8, 1), None)]);
    assert!(error_of(dup).contains("appears twice"));
    let no_weights = ok.project(&[0, 2]).unwrap();
    assert!(error_of(no_weights).contains("'weights': missing"));
    let names_as_weights = RecordBatch::try_from_iter([
        ("layer_name", ok.column(0).clone()),
        ("weights", ok.column(0).clone()),
    ])
    .unwrap();
    let msg = error_of(names_as_weights);
    assert!(
        msg.contains("found Utf8") && msg.contains("float32 or float16"),
        "{msg}"
    );
    let mut names = StringBuilder::new();
    names.append_null();
    let null_name = RecordBatch::try_from_iter([
        ("layer_name", Arc::new(names.finish()) as ArrayRef),
        ("weights", ok.column(1).clone()),
    ])
    .unwrap();
    assert!(error_of(null_name).contains("row 0 has a null layer name"));
    assert!(read_layers(&[]).unwrap().is_empty());
}
