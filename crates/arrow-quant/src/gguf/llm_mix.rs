//! The per-tensor types of a language model re-quantized from its GGUF (llama.cpp's converter names:
//! `token_embd.weight`, `blk.N.attn_v.weight`, `output.weight`, ...): the mixes of llama.cpp's `llama-quantize`
//! (`llama_tensor_get_type` in `src/llama-quant.cpp`, 2026), so that a `Q4_K_M` of ours stores the same tensors at
//! the same types as theirs and the files compare at equal size:
//! - which tensors are quantized: 2-D and 3-D weights (`*weight`), not norms, not the MoE router
//!   (`ffn_gate_inp`), not position embeddings; the others keep their type;
//! - `output.weight` (and `token_embd.weight` when the model has no `output.weight`: tied embeddings) at Q6_K,
//!   or Q8_0 when its rows do not fit the base type's blocks or the preset is Q8_0;
//! - `attn_v` / `attn_qkv` / `attn_kv_b`, `attn_k`, `attn_output` and `ffn_down` bumps by preset, layer (the
//!   `use_more_bits` schedule: the first and last eighth of the layers and every third one between) and shape of
//!   the model (grouped-query attention, 8 experts).
//!
//! - with an imatrix: no IQ4 ffn-down bump; the first eighth of ffn-down Q4_1 / Q5_1 at Q4_0 / Q5_0.
//!
//! Not followed: llama.cpp's 70B rule (it needs its model-size table) and its Falcon exceptions; the IQ1 / IQ2 /
//! IQ3 presets, which we do not write.

use crate::gguf::{meta_get, GgmlType, MetaArray, MetaValue, Preset};
use std::collections::HashMap;

/// A tensor's role in llama.cpp's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `token_embd.weight`, `per_layer_token_embd.weight`.
    TokenEmbd,
    /// `output.weight`.
    Output,
    /// `attn_q.weight`.
    AttnQ,
    /// `attn_k.weight`.
    AttnK,
    /// `attn_v.weight`, fused `attn_qkv.weight`, MLA's `attn_kv_b.weight`: the value-like tensors.
    AttnV,
    /// `attn_output.weight`.
    AttnOutput,
    /// `ffn_down*` (dense or experts).
    FfnDown,
    /// Anything else.
    Other,
}

/// The category of tensor `name` (llama.cpp's `tensor_get_category`, value-like tensors as one).
pub fn category(name: &str) -> Category {
    match name {
        "output.weight" => Category::Output,
        "token_embd.weight" | "per_layer_token_embd.weight" => Category::TokenEmbd,
        _ if ["attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"]
            .iter()
            .any(|k| name.contains(k)) =>
        {
            Category::AttnV
        }
        _ if name.contains("attn_k.weight") => Category::AttnK,
        _ if name.contains("attn_q.weight") => Category::AttnQ,
        _ if name.contains("attn_output.weight") => Category::AttnOutput,
        _ if name.contains("ffn_down") => Category::FfnDown,
        _ => Category::Other,
    }
}

/// Whether llama-quantize quantizes tensor `name` of `dims` dimensions at all (`tensor_allows_quantization`, the
/// rules that apply to the models our users re-quantize: LLMs and diffusion LLMs).
pub fn is_quantized(name: &str, dims: usize) -> bool {
    const NEVER: [&str; 8] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "attn_rel_b.weight",
        ".position_embd",
    ];
    dims >= 2
        && name.ends_with("weight")
        && !NEVER.iter().any(|k| name.contains(k))
        && !matches!(name, "position_embd.weight" | "token_types.weight")
}

/// llama.cpp's layer schedule of the `_M` mixes: the first and last eighth of the layers, and every third between.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    i_layer < n_layers / 8
        || i_layer >= 7 * n_layers / 8
        || (i_layer as isize - (n_layers / 8) as isize).rem_euclid(3) == 2
}

/// What the rules need of one language model: its shape (from the GGUF metadata) and the position of every
/// value-like tensor among them (llama.cpp counts those in file order).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmModel {
    /// `general.architecture` (`llama`, `llada`, `qwen2`, ...).
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// Query heads per key/value head (`head_count / head_count_kv`; 1 without grouped-query attention).
    pub n_gqa: usize,
    /// `{arch}.expert_count` (0 for a dense model).
    pub n_expert: usize,
    /// No `output.weight`: the output shares the token embeddings, which then get the output's type.
    pub tied_embeddings: bool,
    /// An imatrix is given (`--imatrix`): llama.cpp then drops the IQ4 ffn-down bump and guards the first eighth of
    /// a Q4_0 / Q5_0 model's ffn-down with Q4_1 / Q5_1.
    pub has_imatrix: bool,
    /// Index of each value-like tensor among them, and their count.
    attn_v_index: HashMap<String, usize>,
    n_attn_v: usize,
}

/// A count of the model's metadata: an integer, or for a per-layer array (some architectures' head counts) the
/// first layer's.
fn meta_usize(metadata: &[(String, MetaValue)], key: &str) -> Option<usize> {
    match meta_get(metadata, key)? {
        MetaValue::Array(MetaArray::U32(v)) => v.first().and_then(|&x| usize::try_from(x).ok()),
        MetaValue::Array(MetaArray::I32(v)) => v.first().and_then(|&x| usize::try_from(x).ok()),
        v => v.as_usize(),
    }
}

impl LlmModel {
    /// The model of a GGUF source whose `general.architecture` is `arch` (not a diffusion family) and whose
    /// metadata has `{arch}.block_count`; `None` for anything else (a diffusion GGUF, a safetensors checkpoint).
    pub fn detect(metadata: &[(String, MetaValue)], names: &[&str]) -> Option<Self> {
        let arch = meta_get(metadata, "general.architecture")?
            .as_str()?
            .to_string();
        let n_layer = meta_usize(metadata, &format!("{arch}.block_count"))?;
        let heads = meta_usize(metadata, &format!("{arch}.attention.head_count")).unwrap_or(1);
        let kv_heads =
            meta_usize(metadata, &format!("{arch}.attention.head_count_kv")).unwrap_or(heads);
        let n_expert = meta_usize(metadata, &format!("{arch}.expert_count")).unwrap_or(0);
        let attn_v_index: HashMap<String, usize> = names
            .iter()
            .filter(|n| category(n) == Category::AttnV)
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        Some(Self {
            arch,
            n_layer,
            n_gqa: heads.checked_div(kv_heads).unwrap_or(1),
            n_expert,
            tied_embeddings: !names.contains(&"output.weight"),
            has_imatrix: false,
            n_attn_v: attn_v_index.len(),
            attn_v_index,
        })
    }

    /// The layer of `name` (`blk.N.`), if it has one inside the model.
    fn layer(&self, name: &str) -> Option<usize> {
        let rest = name.strip_prefix("blk.")?;
        let n: usize = rest.split('.').next()?.parse().ok()?;
        (n < self.n_layer).then_some(n)
    }

    /// The type llama-quantize gives the quantized tensor `name` (of `cols` elements per row) under `preset`,
    /// before its rows are fitted (the caller's fallback does that), or `None` for the preset's base type.
    pub fn type_for(&self, preset: Preset, name: &str, cols: usize) -> Option<GgmlType> {
        use GgmlType as T;
        use Preset as P;
        let base = preset.base();
        let cat = category(name);
        if cat == Category::Output || (self.tied_embeddings && cat == Category::TokenEmbd) {
            return Some(if !base.fits_row(cols) || base == T::Q8_0 {
                T::Q8_0
            } else {
                T::Q6_K
            });
        }
        let eight_experts = self.n_expert == 8;
        let gqa4 = self.n_gqa >= 4;
        match cat {
            Category::AttnV => {
                let i = self.attn_v_index.get(name).copied().unwrap_or(0);
                let n = self.n_attn_v;
                let mut ty = match preset {
                    P::Q2_K => Some(if gqa4 { T::Q4_K } else { T::Q3_K }),
                    P::Q3_K_M => Some(if i < 2 { T::Q5_K } else { T::Q4_K }),
                    P::Q3_K_L => Some(T::Q5_K),
                    P::IQ4_NL | P::IQ4_XS if gqa4 => Some(T::Q5_K),
                    P::Q4_K_M | P::Q5_K_M if use_more_bits(i, n) => Some(T::Q6_K),
                    P::Q4_K_S if i < 4 => Some(T::Q5_K),
                    _ => None,
                };
                if eight_experts {
                    ty = Some(T::Q8_0);
                }
                ty
            }
            Category::AttnK if eight_experts => Some(T::Q8_0),
            Category::FfnDown => {
                let i = self.layer(name).unwrap_or(0);
                let n = self.n_layer;
                match preset {
                    P::Q2_K => Some(T::Q3_K),
                    P::Q3_K_M => Some(if i < n / 16 { T::Q5_K } else { T::Q4_K }),
                    P::Q3_K_L => Some(T::Q5_K),
                    P::Q4_K_M | P::Q5_K_M if use_more_bits(i, n) => Some(T::Q6_K),
                    P::IQ4_NL | P::IQ4_XS if i < n / 8 && !self.has_imatrix => Some(T::Q5_K),
                    P::Q4_K_S if i < n / 8 => Some(T::Q5_K),
                    P::Q4_0 if i < n / 8 && self.has_imatrix => Some(T::Q4_1),
                    P::Q5_0 if i < n / 8 && self.has_imatrix => Some(T::Q5_1),
                    _ => None,
                }
            }
            Category::AttnOutput if eight_experts => match preset {
                P::Q2_K | P::Q3_K_S | P::Q3_K_M | P::IQ4_NL | P::Q4_K_S | P::Q4_K_M | P::IQ4_XS => {
                    Some(T::Q5_K)
                }
                _ => None,
            },
            Category::AttnOutput => match preset {
                P::Q2_K => Some(T::Q3_K),
                P::Q3_K_M => Some(T::Q4_K),
                P::Q3_K_L => Some(T::Q5_K),
                _ => None,
            },
            _ => None,
        }
        .filter(|&ty| ty != base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    /// A llama-like model of `n_layer` layers in llama.cpp's tensor order.
    fn model(n_layer: usize, kv_heads: u32, experts: u32, output: bool) -> (LlmModel, Vec<String>) {
        let mut names = vec!["token_embd.weight".to_string()];
        for i in 0..n_layer {
            for t in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                names.push(format!("blk.{i}.{t}.weight"));
            }
        }
        names.push("output_norm.weight".into());
        if output {
            names.push("output.weight".into());
        }
        let metadata = vec![
            ("general.architecture".to_string(), MetaValue::from("llama")),
            (
                "llama.block_count".to_string(),
                MetaValue::U32(n_layer as u32),
            ),
            ("llama.attention.head_count".to_string(), MetaValue::U32(32)),
            (
                "llama.attention.head_count_kv".to_string(),
                MetaValue::U32(kv_heads),
            ),
            ("llama.expert_count".to_string(), MetaValue::U32(experts)),
        ];
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        (LlmModel::detect(&metadata, &refs).unwrap(), names)
    }

    fn ty(m: &LlmModel, preset: Preset, name: &str) -> GgmlType {
        m.type_for(preset, name, 4096).unwrap_or(preset.base())
    }

    #[test]
    fn the_q4_k_m_mix_of_a_32_layer_model_is_llama_quantizes() {
        let (m, _) = model(32, 8, 0, true);
        assert_eq!((m.n_gqa, m.tied_embeddings), (4, false));
        // use_more_bits(i, 32): i < 4, i >= 28, or (i - 4) % 3 == 2
        let more: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            more,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        for i in 0..32 {
            let want = if more.contains(&i) { T::Q6_K } else { T::Q4_K };
            assert_eq!(
                ty(&m, Preset::Q4_K_M, &format!("blk.{i}.attn_v.weight")),
                want,
                "{i}"
            );
            assert_eq!(
                ty(&m, Preset::Q4_K_M, &format!("blk.{i}.ffn_down.weight")),
                want,
                "{i}"
            );
            assert_eq!(
                ty(&m, Preset::Q4_K_M, &format!("blk.{i}.attn_q.weight")),
                T::Q4_K
            );
        }
        assert_eq!(ty(&m, Preset::Q4_K_M, "output.weight"), T::Q6_K);
        assert_eq!(ty(&m, Preset::Q4_K_M, "token_embd.weight"), T::Q4_K);
        // a fused qkv is value-like: the same schedule
        assert_eq!(ty(&m, Preset::Q4_K_M, "blk.0.attn_qkv.weight"), T::Q6_K);
    }

    #[test]
    fn other_presets_and_model_shapes() {
        let (m, _) = model(32, 32, 0, false);
        assert!(m.tied_embeddings);
        assert_eq!(m.n_gqa, 1);
        // tied embeddings get the output's type
        assert_eq!(ty(&m, Preset::Q4_0, "token_embd.weight"), T::Q6_K);
        assert_eq!(ty(&m, Preset::Q8_0, "token_embd.weight"), T::Q8_0);
        // Q2_K without grouped-query attention
        assert_eq!(ty(&m, Preset::Q2_K, "blk.5.attn_v.weight"), T::Q3_K);
        assert_eq!(ty(&m, Preset::Q2_K, "blk.5.ffn_down.weight"), T::Q3_K);
        assert_eq!(ty(&m, Preset::Q2_K, "blk.5.attn_output.weight"), T::Q3_K);
        assert_eq!(ty(&m, Preset::Q2_K, "blk.5.attn_q.weight"), T::Q2_K);
        // Q3_K_M: the first two value tensors Q5_K, the first 1/16 of ffn_down Q5_K, attn_output Q4_K
        assert_eq!(ty(&m, Preset::Q3_K_M, "blk.1.attn_v.weight"), T::Q5_K);
        assert_eq!(ty(&m, Preset::Q3_K_M, "blk.2.attn_v.weight"), T::Q4_K);
        assert_eq!(ty(&m, Preset::Q3_K_M, "blk.1.ffn_down.weight"), T::Q5_K);
        assert_eq!(ty(&m, Preset::Q3_K_M, "blk.2.ffn_down.weight"), T::Q4_K);
        assert_eq!(ty(&m, Preset::Q3_K_M, "blk.2.attn_output.weight"), T::Q4_K);
        // Q4_K_S: the first four value tensors and the first eighth of ffn_down Q5_K
        assert_eq!(ty(&m, Preset::Q4_K_S, "blk.3.attn_v.weight"), T::Q5_K);
        assert_eq!(ty(&m, Preset::Q4_K_S, "blk.4.attn_v.weight"), T::Q4_K);
        assert_eq!(ty(&m, Preset::Q4_K_S, "blk.3.ffn_down.weight"), T::Q5_K);
        assert_eq!(ty(&m, Preset::Q4_K_S, "blk.4.ffn_down.weight"), T::Q4_K);
        // uniform presets stay uniform but for the output
        assert_eq!(ty(&m, Preset::Q6_K, "blk.0.attn_v.weight"), T::Q6_K);
        assert_eq!(ty(&m, Preset::Q4_0, "blk.0.ffn_down.weight"), T::Q4_0);
        // 8 experts: value and key Q8_0, attention output Q5_K
        let (moe, _) = model(16, 8, 8, true);
        assert_eq!(ty(&moe, Preset::Q4_K_M, "blk.7.attn_v.weight"), T::Q8_0);
        assert_eq!(ty(&moe, Preset::Q4_K_M, "blk.7.attn_k.weight"), T::Q8_0);
        assert_eq!(
            ty(&moe, Preset::Q4_K_M, "blk.7.attn_output.weight"),
            T::Q5_K
        );
        assert_eq!(
            ty(&moe, Preset::Q4_K_M, "blk.8.ffn_down_exps.weight"),
            T::Q4_K
        );
        // with an imatrix, llama.cpp's guards: Q4_0's first eighth of ffn-down Q4_1, no IQ4 ffn-down bump
        let (mut im, _) = model(16, 8, 0, true);
        assert_eq!(ty(&im, Preset::Q4_0, "blk.1.ffn_down.weight"), T::Q4_0);
        assert_eq!(ty(&im, Preset::IQ4_XS, "blk.1.ffn_down.weight"), T::Q5_K);
        im.has_imatrix = true;
        assert_eq!(ty(&im, Preset::Q4_0, "blk.1.ffn_down.weight"), T::Q4_1);
        assert_eq!(ty(&im, Preset::Q4_0, "blk.2.ffn_down.weight"), T::Q4_0);
        assert_eq!(ty(&im, Preset::Q5_0, "blk.0.ffn_down.weight"), T::Q5_1);
        assert_eq!(ty(&im, Preset::IQ4_XS, "blk.1.ffn_down.weight"), T::IQ4_XS);
        // an output whose rows the base type does not fit: Q8_0
        assert_eq!(
            m.type_for(Preset::Q4_K_M, "output.weight", 4000),
            Some(T::Q8_0)
        );
    }

    #[test]
    fn which_tensors_are_quantized() {
        assert!(is_quantized("blk.0.attn_q.weight", 2));
        assert!(is_quantized("blk.0.ffn_down_exps.weight", 3));
        assert!(!is_quantized("blk.0.attn_norm.weight", 1));
        assert!(!is_quantized("blk.0.attn_q_norm.weight", 2));
        assert!(!is_quantized("blk.0.ffn_gate_inp.weight", 2));
        assert!(!is_quantized("blk.0.attn_q.bias", 2));
        assert!(!is_quantized("position_embd.weight", 2));
    }

    #[test]
    fn only_a_gguf_with_a_block_count_is_a_language_model() {
        let meta = vec![("general.architecture".to_string(), MetaValue::from("flux"))];
        assert_eq!(
            LlmModel::detect(&meta, &["double_blocks.0.img_attn.qkv.weight"]),
            None
        );
        assert_eq!(LlmModel::detect(&[], &["a.weight"]), None);
    }
}
