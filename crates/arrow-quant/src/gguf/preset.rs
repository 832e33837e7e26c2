//! Whole-model GGUF types (`--type Q4_K_M`): each preset's base type, the `general.file_type` it is written as
//! (llama.cpp's `llama_ftype`), and the bumps of its mix: in the `_M` / `_L` presets the value, fused-qkv and
//! feed-forward-down projections ([`Role`]) go up the K ladder (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0).
//!
//! | preset | base | value | fused qkv | ffn down | file_type |
//! |---|---|---|---|---|---:|
//! | Q2_K | Q2_K | Q3_K | - | - | 10 |
//! | Q3_K_S | Q3_K | - | - | - | 11 |
//! | Q3_K_M | Q3_K | Q4_K | Q4_K | Q4_K | 12 |
//! | Q3_K_L | Q3_K | Q5_K | Q4_K | Q5_K | 13 |
//! | Q4_K_S | Q4_K | - | - | - | 14 |
//! | Q4_K_M | Q4_K | Q5_K | Q5_K | Q5_K | 15 |
//! | Q5_K_S | Q5_K | - | - | - | 16 |
//! | Q5_K_M | Q5_K | Q6_K | Q6_K | Q6_K | 17 |
//!
//! Every other preset (Q6_K, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, IQ4_NL, IQ4_XS, F16, BF16, F32) is its one type.
//! `Q3_K`, `Q4_K` and `Q5_K` mean the `_M` mix, as they do for llama.cpp's `llama-quantize`.

use crate::error::{QuantError, Result};
use crate::gguf::GgmlType;
use std::fmt;
use std::str::FromStr;

/// A whole-model type preset.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Everything Q8_0.
    Q8_0,
    /// Everything Q6_K.
    Q6_K,
    /// Q5_K, value / fused-qkv / ffn-down projections Q6_K.
    Q5_K_M,
    /// Everything Q5_K.
    Q5_K_S,
    /// Everything Q5_1.
    Q5_1,
    /// Everything Q5_0.
    Q5_0,
    /// Q4_K, value / fused-qkv / ffn-down projections Q5_K.
    Q4_K_M,
    /// Everything Q4_K.
    Q4_K_S,
    /// Everything Q4_1.
    Q4_1,
    /// Everything Q4_0.
    Q4_0,
    /// Q3_K, value and ffn-down projections Q5_K, fused qkv Q4_K.
    Q3_K_L,
    /// Q3_K, value / fused-qkv / ffn-down projections Q4_K.
    Q3_K_M,
    /// Everything Q3_K.
    Q3_K_S,
    /// Q2_K, value projections Q3_K.
    Q2_K,
    /// Everything IQ4_NL.
    IQ4_NL,
    /// Everything IQ4_XS.
    IQ4_XS,
    /// Everything F16.
    F16,
    /// Everything BF16.
    BF16,
    /// Everything F32.
    F32,
}

/// The tensors the `_M` / `_L` mixes store one or two levels up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An attention value projection (`attn1.to_v`, Wan's `self_attn.v`, ...).
    Value,
    /// A fused q/k/v projection (`img_attn.qkv`, Flux's single-block `linear1`, ...).
    FusedQkv,
    /// A feed-forward down projection (`ff.net.2`, `img_mlp.2`, `mlp.fc2`, `down_proj`, ...).
    FfnDown,
}

struct PresetInfo {
    preset: Preset,
    name: &'static str,
    base: GgmlType,
    /// Levels up the K ladder for [value, fused qkv, ffn down].
    bumps: [usize; 3],
    file_type: u32,
}

const fn p(
    preset: Preset,
    name: &'static str,
    base: GgmlType,
    bumps: [usize; 3],
    file_type: u32,
) -> PresetInfo {
    PresetInfo {
        preset,
        name,
        base,
        bumps,
        file_type,
    }
}

static PRESETS: [PresetInfo; 19] = [
    p(Preset::Q8_0, "Q8_0", GgmlType::Q8_0, [0, 0, 0], 7),
    p(Preset::Q6_K, "Q6_K", GgmlType::Q6_K, [0, 0, 0], 18),
    p(Preset::Q5_K_M, "Q5_K_M", GgmlType::Q5_K, [1, 1, 1], 17),
    p(Preset::Q5_K_S, "Q5_K_S", GgmlType::Q5_K, [0, 0, 0], 16),
    p(Preset::Q5_1, "Q5_1", GgmlType::Q5_1, [0, 0, 0], 9),
    p(Preset::Q5_0, "Q5_0", GgmlType::Q5_0, [0, 0, 0], 8),
    p(Preset::Q4_K_M, "Q4_K_M", GgmlType::Q4_K, [1, 1, 1], 15),
    p(Preset::Q4_K_S, "Q4_K_S", GgmlType::Q4_K, [0, 0, 0], 14),
    p(Preset::Q4_1, "Q4_1", GgmlType::Q4_1, [0, 0, 0], 3),
    p(Preset::Q4_0, "Q4_0", GgmlType::Q4_0, [0, 0, 0], 2),
    p(Preset::Q3_K_L, "Q3_K_L", GgmlType::Q3_K, [2, 1, 2], 13),
    p(Preset::Q3_K_M, "Q3_K_M", GgmlType::Q3_K, [1, 1, 1], 12),
    p(Preset::Q3_K_S, "Q3_K_S", GgmlType::Q3_K, [0, 0, 0], 11),
    p(Preset::Q2_K, "Q2_K", GgmlType::Q2_K, [1, 0, 0], 10),
    p(Preset::IQ4_NL, "IQ4_NL", GgmlType::IQ4_NL, [0, 0, 0], 25),
    p(Preset::IQ4_XS, "IQ4_XS", GgmlType::IQ4_XS, [0, 0, 0], 30),
    p(Preset::F16, "F16", GgmlType::F16, [0, 0, 0], 1),
    p(Preset::BF16, "BF16", GgmlType::BF16, [0, 0, 0], 32),
    p(Preset::F32, "F32", GgmlType::F32, [0, 0, 0], 0),
];

/// The K ladder the bumps climb.
const LADDER: [GgmlType; 6] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

/// llama-quantize's short names for the `_M` mixes.
const ALIASES: [(&str, Preset); 3] = [
    ("Q3_K", Preset::Q3_K_M),
    ("Q4_K", Preset::Q4_K_M),
    ("Q5_K", Preset::Q5_K_M),
];

impl Preset {
    fn info(self) -> &'static PresetInfo {
        // PRESETS lists every variant once, in declaration order
        &PRESETS[self as usize]
    }

    /// Every preset.
    pub fn all() -> impl Iterator<Item = Preset> {
        PRESETS.iter().map(|i| i.preset)
    }

    /// Name as llama.cpp spells it (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The type of every tensor the mix does not bump.
    pub fn base(self) -> GgmlType {
        self.info().base
    }

    /// The `general.file_type` value (llama.cpp's `llama_ftype`, gguf-py's `LlamaFileType`).
    pub fn file_type(self) -> u32 {
        self.info().file_type
    }

    /// The type of a tensor of `role` (`None`: no bump), after the mix's bump.
    pub fn type_for(self, role: Option<Role>) -> GgmlType {
        let info = self.info();
        let levels = match role {
            None => 0,
            Some(Role::Value) => info.bumps[0],
            Some(Role::FusedQkv) => info.bumps[1],
            Some(Role::FfnDown) => info.bumps[2],
        };
        match LADDER.iter().position(|t| *t == info.base) {
            Some(i) if levels > 0 => LADDER[(i + levels).min(LADDER.len() - 1)],
            _ => info.base,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = QuantError;
    /// Parses a preset name case-insensitively (`q4_k_m`; `Q4_K` is `Q4_K_M`, as for llama-quantize).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        PRESETS
            .iter()
            .map(|i| (i.name, i.preset))
            .chain(ALIASES)
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, preset)| preset)
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|i| i.name).collect();
                QuantError::config("GGUF type", format!("{s:?}"), names.join(", "))
            })
    }
}

/// Name patterns of each role: every substring of one pattern must be in the lower-cased name. First role wins,
/// in the order value, fused qkv, ffn down (as in ComfyUI-GGUF's llama.cpp patch, `img_tensor_get_type`, whose
/// patterns these include).
const ROLE_PATTERNS: [(Role, &[&[&str]]); 3] = [
    (
        Role::Value,
        &[
            &["attn_v.weight"], // llama.cpp names
            &[".to_v."], // SD / SDXL / LTX-Video / HiDream / Qwen-Image: attn1.to_v, attn2.to_v
            &[".v.weight"], // Wan: self_attn.v, cross_attn.v
            &[".v_img.weight"], // Wan image-to-video: cross_attn.v_img
            &[".attn.w1v."], // AuraFlow
            &[".attn.w2v."], // AuraFlow
            &[".v_proj."], // generic: self_attn.v_proj
            &["_v_proj."], // generic: add_v_proj
        ],
    ),
    (
        Role::FusedQkv,
        &[
            &["qkv"], // Flux img_attn.qkv / txt_attn.qkv, SD3 attn.qkv, HunyuanVideo attn_qkv, Lumina2 attention.qkv
            &["in_proj_weight"], // torch.nn.MultiheadAttention
            &["single_blocks.", ".linear1."], // Flux / HunyuanVideo single-stream blocks: qkv and mlp-in fused
        ],
    ),
    (
        Role::FfnDown,
        &[
            &["ffn_down"],                 // llama.cpp names
            &["down_proj"],                // generic gated MLPs
            &[".ff.net.2."],               // SD / SDXL / LTX-Video
            &[".ffn.2."],                  // Wan
            &["_mlp.2."],                  // Flux double blocks: img_mlp.2, txt_mlp.2
            &["mlp.net.2."],               // Qwen-Image: img_mlp.net.2, txt_mlp.net.2
            &["mlp.fc2."],                 // SD3 x_block.mlp.fc2, HunyuanVideo img_mlp.fc2
            &[".mlp.layer2."],             // Cosmos
            &[".w2.weight"], // SwiGLU w2: Lumina2 feed_forward.w2, HiDream experts / ff_t
            &["mlp", ".c_proj."], // AuraFlow mlpX / mlpC / mlp .c_proj
            &[".adaln_modulation_mlp.2."], // in ComfyUI-GGUF's patch
        ],
    ),
];

/// The role of tensor `name` in the `_M` / `_L` mixes, from its name; only `weight` tensors have one.
pub fn role_of(name: &str) -> Option<Role> {
    let lower = name.to_ascii_lowercase();
    if !lower.ends_with("weight") {
        return None;
    }
    ROLE_PATTERNS.iter().find_map(|(role, patterns)| {
        patterns
            .iter()
            .any(|all| all.iter().all(|s| lower.contains(s)))
            .then_some(*role)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_case_insensitively_with_llama_quantize_aliases() {
        for preset in Preset::all() {
            assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
            assert_eq!(
                preset.name().to_lowercase().parse::<Preset>().unwrap(),
                preset
            );
        }
        assert_eq!(Preset::all().count(), 19);
        assert_eq!("q4_k".parse::<Preset>().unwrap(), Preset::Q4_K_M);
        assert_eq!(" Q3_K ".parse::<Preset>().unwrap(), Preset::Q3_K_M);
        let e = "Q4_K_XL".parse::<Preset>().unwrap_err().to_string();
        assert!(
            e.contains("\"Q4_K_XL\"") && e.contains("Q4_K_M") && e.contains("IQ4_XS"),
            "{e}"
        );
    }

    #[test]
    fn mixes_bump_their_roles_up_the_ladder() {
        use GgmlType as T;
        let v = Some(Role::Value);
        let qkv = Some(Role::FusedQkv);
        let down = Some(Role::FfnDown);
        assert_eq!(Preset::Q4_K_M.type_for(None), T::Q4_K);
        assert_eq!(Preset::Q4_K_M.type_for(v), T::Q5_K);
        assert_eq!(Preset::Q4_K_M.type_for(qkv), T::Q5_K);
        assert_eq!(Preset::Q4_K_M.type_for(down), T::Q5_K);
        assert_eq!(Preset::Q5_K_M.type_for(down), T::Q6_K);
        assert_eq!(Preset::Q3_K_M.type_for(qkv), T::Q4_K);
        assert_eq!(Preset::Q3_K_L.type_for(v), T::Q5_K);
        assert_eq!(Preset::Q3_K_L.type_for(qkv), T::Q4_K);
        assert_eq!(Preset::Q2_K.type_for(v), T::Q3_K);
        assert_eq!(Preset::Q2_K.type_for(down), T::Q2_K);
        // the _S mixes and the single-type presets never bump
        for preset in [
            Preset::Q4_K_S,
            Preset::Q5_K_S,
            Preset::Q3_K_S,
            Preset::Q6_K,
            Preset::Q4_0,
            Preset::F16,
        ] {
            for role in [v, qkv, down] {
                assert_eq!(preset.type_for(role), preset.base(), "{preset}");
            }
        }
        assert_eq!(Preset::Q4_K_M.file_type(), 15);
        assert_eq!(Preset::BF16.file_type(), 32);
        assert_eq!(Preset::IQ4_XS.file_type(), 30);
    }

    #[test]
    fn roles_of_each_family() {
        let cases = [
            // Flux
            ("double_blocks.0.img_attn.qkv.weight", Some(Role::FusedQkv)),
            ("double_blocks.3.txt_attn.qkv.weight", Some(Role::FusedQkv)),
            ("single_blocks.7.linear1.weight", Some(Role::FusedQkv)),
            ("double_blocks.0.img_mlp.2.weight", Some(Role::FfnDown)),
            ("double_blocks.0.txt_mlp.2.weight", Some(Role::FfnDown)),
            ("double_blocks.0.img_mlp.0.weight", None),
            ("double_blocks.0.img_attn.proj.weight", None),
            ("single_blocks.7.linear2.weight", None),
            ("double_blocks.0.img_attn.qkv.bias", None),
            // SD / SDXL (LDM names, under the wrapper prefix)
            (
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_v.weight",
                Some(Role::Value),
            ),
            (
                "model.diffusion_model.output_blocks.3.1.transformer_blocks.1.attn2.to_v.weight",
                Some(Role::Value),
            ),
            (
                "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight",
                Some(Role::FfnDown),
            ),
            (
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight",
                None,
            ),
            (
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight",
                None,
            ),
            // SD3
            (
                "joint_blocks.0.x_block.attn.qkv.weight",
                Some(Role::FusedQkv),
            ),
            (
                "joint_blocks.0.context_block.mlp.fc2.weight",
                Some(Role::FfnDown),
            ),
            // Wan
            ("blocks.0.self_attn.v.weight", Some(Role::Value)),
            ("blocks.0.cross_attn.v_img.weight", Some(Role::Value)),
            ("blocks.0.ffn.2.weight", Some(Role::FfnDown)),
            ("blocks.0.self_attn.k.weight", None),
            ("blocks.0.ffn.0.weight", None),
            // others and generic
            ("double_layers.0.attn.w1v.weight", Some(Role::Value)),
            ("double_layers.0.mlpX.c_proj.weight", Some(Role::FfnDown)),
            ("layers.3.feed_forward.w2.weight", Some(Role::FfnDown)),
            ("blocks.0.mlp.layer2.weight", Some(Role::FfnDown)),
            (
                "transformer_blocks.0.img_mlp.net.2.weight",
                Some(Role::FfnDown),
            ),
            ("model.layers.0.mlp.down_proj.weight", Some(Role::FfnDown)),
            ("model.layers.0.self_attn.v_proj.weight", Some(Role::Value)),
            (
                "encoder.layers.0.self_attn.in_proj_weight",
                Some(Role::FusedQkv),
            ),
            ("network.input_blocks.11.1.qkv.weight", Some(Role::FusedQkv)),
            ("blocks.0.mlp.fc1.weight", None),
            ("blocks.0.attn.qkv_proj.weight", Some(Role::FusedQkv)),
            (
                "transformer_blocks.0.attn.add_v_proj.weight",
                Some(Role::Value),
            ),
        ];
        for (name, role) in cases {
            assert_eq!(role_of(name), role, "{name}");
        }
    }
}
