//! Which tensors are quantized: floats of at least 2 dimensions and `min_elements`, except names matching a keep
//! pattern and the model's first and last layers, which stay in 16-bit.
//!
//! A checkpoint does not record layer order (safetensors files are usually sorted by name), so the first and last
//! layers are recognised by the top-level names diffusion models and LLMs give them ([`FIRST_LAST_PREFIXES`]):
//! `conv_in.` / `conv_out.` (diffusers UNets), `input_blocks.0.0.` / `out.` (OpenAI / LDM UNets), `x_embedder.` /
//! `patch_embed.` / `final_layer.` / `proj_out.` / `context_embedder.` (DiT, SD3), `img_in.` / `txt_in.` (Flux),
//! `patch_embedding.` / `head.` (Wan), `lm_head.` (language models). "Top-level" is after any wrapper prefix a
//! checkpoint puts around the model ([`WRAPPER_PREFIXES`]: `model.diffusion_model.` of LDM checkpoints,
//! `network.`, `transformer.`, `unet.`, `model.`, `diffusion_model.`), so `model.diffusion_model.out.2.weight`
//! is a last layer.

use super::config::PipelineConfig;
use crate::checkpoint::{Dtype, TensorEntry};
use crate::config::{BitWidth, FlatLayout, GroupSize, Layout, Method, QuantConfig};
use crate::gguf::{GgmlType, Rounding};

/// What happens to one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Quantize (subject to the quality floor).
    Quantize,
    /// Keep the values in 16-bit (f32 sources become f16), for this reason.
    Keep(String),
    /// Carry the bytes through unchanged (not a float type the kernels take).
    Raw,
}

/// Name prefixes of first and last layers, matched after the wrapper prefixes (see the module documentation).
pub const FIRST_LAST_PREFIXES: [&str; 14] = [
    "conv_in.",
    "conv_out.",
    "input_blocks.0.0.",
    "out.",
    "x_embedder.",
    "patch_embed.",
    "final_layer.",
    "proj_out.",
    "context_embedder.",
    "img_in.",
    "txt_in.",
    "patch_embedding.",
    "head.",
    "lm_head.",
];

/// Prefixes checkpoints put around the model's own names, stripped (repeatedly, longest first) before the
/// first / last layer rule is applied.
pub const WRAPPER_PREFIXES: [&str; 6] = [
    "model.diffusion_model.",
    "diffusion_model.",
    "network.",
    "transformer.",
    "unet.",
    "model.",
];

/// `name` without the wrapper prefixes around it.
pub fn model_name(name: &str) -> &str {
    let mut rest = name;
    while let Some(p) = WRAPPER_PREFIXES.iter().find(|p| rest.starts_with(*p)) {
        rest = &rest[p.len()..];
    }
    rest
}

/// The quantization settings of layer `name` with `ndim` dimensions, at the run's width.
///
/// At 4 bits and below, when the run leaves both layout and method on `auto`, convolution kernels (3 or more
/// dimensions) and names matching an unclipped pattern (`PipelineConfig::unclipped_patterns`, case-insensitive:
/// the conditioning projections) get plain rounding: symmetric flat groups of 32 (`rtn`, the layout of llama.cpp's
/// Q4_0, 4.5 bits/weight at INT4). Everything else, and every layer of a run that names its layout or method,
/// gets the run's settings. Measured on the terrain UNet (`benchmarks/bench_e2e.py`, four input sets): the
/// searches' lower weight error raised its output error at INT4 (two-level 1.5-2.9 x plain rounding's), while at
/// INT8 two-level is the better (0.3-0.4 x Q8_0's output error against 0.5 x for plain rounding); on MiniLM's
/// linear layers two-level is the better at INT4 too (1 - cos 2.1e-2 against 3.1e-2).
pub fn layer_quant(config: &PipelineConfig, name: &str, ndim: usize) -> QuantConfig {
    let quant = config.quant;
    let auto = quant.layout == Layout::Auto && quant.method == Method::Auto;
    if !auto || quant.bits > BitWidth::Int4 {
        return quant;
    }
    if plain_rounding(config, name, ndim) {
        QuantConfig {
            bits: quant.bits,
            layout: Layout::Flat(FlatLayout {
                group_size: GroupSize::Elements(32),
                symmetric: true,
                ..FlatLayout::default()
            }),
            method: Method::Rtn,
        }
    } else {
        quant
    }
}

/// True for the layers the policy rounds plainly: convolution kernels (3 or more dimensions) and names matching
/// an unclipped pattern (`PipelineConfig::unclipped_patterns`, case-insensitive: the conditioning projections).
pub fn plain_rounding(config: &PipelineConfig, name: &str, ndim: usize) -> bool {
    let lower = name.to_lowercase();
    ndim >= 3
        || config
            .unclipped_patterns
            .iter()
            .any(|p| lower.contains(&p.to_lowercase()))
}

/// The rounding of a GGUF tensor at type `ty`, `plain` when the policy rounds its layer plainly
/// ([`plain_rounding`], in a run whose method is `auto`). Chosen by the terrain UNet's output error against
/// llama.cpp's (`benchmarks/bench_gguf.py`, sixteen input sets pooled; docs/GGUF_TYPES.md has the figures):
/// - Q4_0: round-to-nearest, llama.cpp's reference rounding (our search: 1.01x);
/// - Q2_K, Q3_K, IQ4_NL, IQ4_XS: [`Rounding::Unbiased`], a weighted search with the gain corrected (the plain
///   search's shrinkage attenuated those layers: 1.49x, 1.29x, 1.13x and 1.03x llama.cpp's on the convolutions
///   a GGUF file quantizes);
/// - Q4_K, Q5_K: [`Rounding::Weighted`], the search weighted by `x²` plus the super-block's mean square (Q4_K)
///   or by `|x|` plus the sub-block's RMS (Q5_K) (the unweighted search gave 1.18x and 1.29x);
/// - Q8_0, Q4_1, Q5_0, Q5_1, Q6_K: our search (0.86x, 0.82x, 0.84x, 0.87x, 0.77x; round-to-nearest at Q6_K gave
///   1.26x). On all the model's convolutions, the small ones a file keeps 16-bit included, llama.cpp's
///   reference rounding had been the better one at the block-32 types.
pub fn gguf_rounding(plain: bool, ty: GgmlType) -> Rounding {
    if !plain {
        return Rounding::Searched;
    }
    match ty {
        GgmlType::Q4_0 => Rounding::Nearest,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS => Rounding::Unbiased,
        GgmlType::Q4_K | GgmlType::Q5_K => Rounding::Weighted,
        _ => Rounding::Searched,
    }
}

/// Decides every tensor of a checkpoint, in order.
pub fn decide(config: &PipelineConfig, tensors: &[&TensorEntry]) -> Vec<Decision> {
    let patterns: Vec<String> = config
        .keep_patterns
        .iter()
        .map(|p| p.to_lowercase())
        .collect();
    tensors
        .iter()
        .map(|t| {
            if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
                return Decision::Raw;
            }
            if t.shape.len() < 2 {
                return Decision::Keep(format!("{}-D tensor", t.shape.len()));
            }
            if t.len() < config.min_elements {
                return Decision::Keep(format!("fewer than {} elements", config.min_elements));
            }
            let lower = t.name.to_lowercase();
            if let Some(p) = patterns.iter().find(|p| lower.contains(p.as_str())) {
                return Decision::Keep(format!("name matches keep pattern '{p}'"));
            }
            if config.keep_first_last {
                let own = model_name(&lower);
                if let Some(p) = FIRST_LAST_PREFIXES.iter().find(|p| own.starts_with(*p)) {
                    return Decision::Keep(format!("first or last layer ('{p}')"));
                }
            }
            Decision::Quantize
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, dtype: Dtype, shape: &[usize]) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            begin: 0,
            end: 0,
        }
    }

    #[test]
    fn default_policy() {
        let t = [
            entry("conv_in.weight", Dtype::F32, &[64, 3, 3, 3]),
            entry("blocks.0.attn.qkv.weight", Dtype::F16, &[192, 64]),
            entry("blocks.0.norm1.weight", Dtype::F32, &[64]),
            entry("blocks.0.attn.proj.bias", Dtype::F32, &[64]),
            entry("time_embed.0.weight", Dtype::F32, &[256, 64]),
            entry("blocks.0.mlp.fc1.weight", Dtype::BF16, &[256, 64]),
            entry("tiny.weight", Dtype::F32, &[4, 4]),
            entry("position_ids", Dtype::I64, &[1, 512]),
            entry("conv_out.weight", Dtype::F32, &[3, 64, 3, 3]),
        ];
        let refs: Vec<&TensorEntry> = t.iter().collect();
        let d = decide(&PipelineConfig::default(), &refs);
        assert_eq!(
            d[0],
            Decision::Keep("first or last layer ('conv_in.')".into())
        );
        assert_eq!(d[1], Decision::Quantize);
        assert_eq!(d[2], Decision::Keep("1-D tensor".into()));
        assert!(matches!(&d[4], Decision::Keep(r) if r.contains("time_embed")));
        assert_eq!(d[5], Decision::Quantize);
        assert!(matches!(&d[6], Decision::Keep(r) if r.contains("fewer than")));
        assert_eq!(d[7], Decision::Raw);
        assert_eq!(
            d[8],
            Decision::Keep("first or last layer ('conv_out.')".into())
        );
        // The rule works under the wrappers checkpoints put around the model, and only on top-level names.
        let wrapped = [
            entry(
                "model.diffusion_model.input_blocks.0.0.weight",
                Dtype::F16,
                &[320, 4, 3, 3],
            ),
            entry(
                "model.diffusion_model.out.2.weight",
                Dtype::F16,
                &[4, 320, 3, 3],
            ),
            entry(
                "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
                Dtype::F16,
                &[320, 320, 3, 3],
            ),
            entry("network.conv_in.weight", Dtype::F32, &[64, 3, 3, 3]),
            entry("transformer.proj_out.weight", Dtype::BF16, &[64, 1536]),
            entry(
                "transformer.transformer_blocks.0.attn.to_out.0.weight",
                Dtype::BF16,
                &[1536, 1536],
            ),
            entry("img_in.weight", Dtype::BF16, &[3072, 64]),
            entry(
                "double_blocks.0.img_attn.proj.weight",
                Dtype::BF16,
                &[3072, 3072],
            ),
        ];
        let wrapped_refs: Vec<&TensorEntry> = wrapped.iter().collect();
        let d = decide(&PipelineConfig::default(), &wrapped_refs);
        let kept: Vec<bool> = d.iter().map(|d| matches!(d, Decision::Keep(_))).collect();
        assert_eq!(
            kept,
            [true, true, false, true, true, false, true, false],
            "{d:?}"
        );
        let config = PipelineConfig::default();
        let plain = QuantConfig {
            bits: BitWidth::Int4,
            layout: Layout::Flat(FlatLayout {
                group_size: GroupSize::Elements(32),
                symmetric: true,
                ..FlatLayout::default()
            }),
            method: Method::Rtn,
        };
        // conditioning projections of each family, under a wrapper prefix, and convolution kernels
        for name in [
            "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
            "network.label_emb.0.weight",
            "unet.down_blocks.0.resnets.0.time_emb_proj.weight",
            "transformer.blocks.3.adaLN_modulation.1.weight",
            "y_embedder.embedding_table.weight",
            "time_in.in_layer.weight",
            "guidance_in.out_layer.weight",
            "vector_in.in_layer.weight",
            "double_blocks.0.img_mod.lin.weight",
            "single_blocks.7.modulation.lin.weight",
            "time_projection.1.weight",
        ] {
            assert_eq!(layer_quant(&config, name, 2), plain, "{name}");
        }
        assert_eq!(
            layer_quant(&config, "input_blocks.1.0.out_layers.3.weight", 4),
            plain
        );
        // linear layers keep the run's settings; so does INT8, and a run that names its layout or method
        assert_eq!(
            layer_quant(&config, "double_blocks.0.img_attn.qkv.weight", 2),
            config.quant
        );
        let int8 = QuantConfig {
            bits: BitWidth::Int8,
            ..config.quant
        };
        let mse = QuantConfig {
            method: Method::Mse,
            layout: Layout::Flat(FlatLayout::default()),
            ..config.quant
        };
        for quant in [int8, mse] {
            let run = PipelineConfig {
                quant,
                ..PipelineConfig::default()
            };
            let name = "input_blocks.1.0.emb_layers.1.weight";
            assert_eq!(layer_quant(&run, name, 4), quant, "{quant:?}");
        }
        let no_edges = PipelineConfig {
            keep_first_last: false,
            ..PipelineConfig::default()
        };
        assert_eq!(decide(&no_edges, &refs)[0], Decision::Quantize);
    }

    #[test]
    fn gguf_plain_layers_get_each_types_measured_rounding() {
        let config = PipelineConfig::default();
        assert!(plain_rounding(
            &config,
            "input_blocks.1.0.in_layers.2.weight",
            4
        ));
        assert!(plain_rounding(
            &config,
            "model.input_blocks.1.0.Emb_Layers.1.weight",
            2
        ));
        assert!(!plain_rounding(
            &config,
            "input_blocks.1.1.proj_in.weight",
            2
        ));
        assert_eq!(gguf_rounding(true, GgmlType::Q4_0), Rounding::Nearest);
        assert_eq!(gguf_rounding(false, GgmlType::Q4_0), Rounding::Searched);
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q6_K,
        ] {
            assert_eq!(gguf_rounding(true, ty), Rounding::Searched, "{ty:?}");
        }
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K] {
            assert_eq!(gguf_rounding(true, ty), Rounding::Weighted, "{ty:?}");
            assert_eq!(gguf_rounding(false, ty), Rounding::Searched, "{ty:?}");
        }
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
        ] {
            assert_eq!(gguf_rounding(true, ty), Rounding::Unbiased, "{ty:?}");
            assert_eq!(gguf_rounding(false, ty), Rounding::Searched, "{ty:?}");
        }
    }
}
