//! The model family of a checkpoint, from its tensor names, the way ComfyUI-GGUF's converter (`tools/convert.py`)
//! finds it: its names for `general.architecture`, its `keys_detect` lists (every key of one list present), its
//! `keys_banned` (diffusers-format checkpoints, which no GGUF runtime loads), its `keys_hiprec` (tensors its
//! loader needs in full precision) and `keys_ignore` (tensors it drops); plus the tensors its llama.cpp patch
//! (`tools/lcpp.patch`, `llama_model_quantize_internal`) never quantizes, per family.
//!
//! Names are matched after ComfyUI's prefix rule ([`detection_names`]). A checkpoint of no known family is
//! [`Arch::Unknown`] (`general.architecture = "unknown"`), not an error: ComfyUI-GGUF and stable-diffusion.cpp
//! need a family they know, but gguf-py, arrow-quant and any reader that takes tensors by name still read the
//! file, and the other diffusion models our users quantize (the terrain UNet) have no family.

use crate::error::{QuantError, Result};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// A model family, named as ComfyUI-GGUF's converter and loader name it in `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// FLUX.1 (reference key names: `double_blocks.*`, `single_blocks.*`).
    Flux,
    /// Stable Diffusion 1.x / 2.x UNet.
    Sd1,
    /// Stable Diffusion XL UNet.
    Sdxl,
    /// Stable Diffusion 3 / 3.5 MMDiT (`joint_blocks.*`).
    Sd3,
    /// AuraFlow.
    Aura,
    /// HiDream-I1.
    HiDream,
    /// Cosmos Predict2.
    Cosmos,
    /// LTX-Video.
    Ltxv,
    /// HunyuanVideo.
    HyVid,
    /// Wan 2.x.
    Wan,
    /// Lumina Image 2.0.
    Lumina2,
    /// Qwen-Image.
    QwenImage,
    /// No known family: `general.architecture = "unknown"`.
    Unknown,
}

/// How one family is recognised and which of its tensors need care.
struct Family {
    arch: Arch,
    name: &'static str,
    /// Lists of keys; the family matches when every key of one list is present.
    detect: &'static [&'static [&'static str]],
    /// Keys that mark a matched checkpoint as one that cannot be converted (diffusers format).
    banned: &'static [&'static str],
    /// Substrings of tensors ComfyUI-GGUF's converter keeps in F32 (its loader cannot take them otherwise).
    hiprec: &'static [&'static str],
    /// Substrings of tensors ComfyUI-GGUF's converter drops.
    ignore: &'static [&'static str],
    /// Tensors llama.cpp's patched `llama-quantize` leaves unquantized for this family.
    keep: &'static [KeepKey],
    /// ComfyUI's "shape fix": rows that no block fits may be stored flattened, with the original shape in
    /// `comfy.gguf.orig_shape.<name>` (the converter's `shape_fix`, set for the UNet families).
    shape_fix: bool,
}

/// One entry of a family's keep list: a substring of the name, or the whole name (after the wrapper prefixes).
#[derive(Debug, Clone, Copy)]
enum KeepKey {
    Contains(&'static str),
    Exact(&'static str),
}

use KeepKey::{Contains as C, Exact as E};

const FLUX_KEEP: &[KeepKey] = &[
    C("txt_in."),
    C("img_in."),
    C("time_in."),
    C("vector_in."),
    C("guidance_in."),
    C("final_layer."),
];

const UNET_KEEP: &[KeepKey] = &[
    C("class_embedding."),
    C("time_embedding."),
    C("add_embedding."),
    C("time_embed."),
    C("label_emb."),
    C("conv_in."),
    C("conv_out."),
    E("input_blocks.0.0.weight"),
    E("out.2.weight"),
];

/// Every family in detection order: ComfyUI-GGUF's `arch_list`, with Qwen-Image (which its loader accepts but
/// its converter does not detect) first, because a Qwen-Image checkpoint also holds the keys that mark a
/// diffusers-format Flux or SD3 (`transformer_blocks.0.attn.norm_added_k.weight`, `...add_q_proj.weight`).
static FAMILIES: [Family; 12] = [
    Family {
        arch: Arch::QwenImage,
        name: "qwen_image",
        detect: &[&["transformer_blocks.0.img_mod.1.weight", "txt_norm.weight"]],
        banned: &[],
        hiprec: &[],
        ignore: &[],
        keep: &[
            C("img_in."),
            C("txt_in."),
            C("time_text_embed."),
            C("norm_out."),
            C("proj_out."),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::Flux,
        name: "flux",
        detect: &[
            &["transformer_blocks.0.attn.norm_added_k.weight"],
            &["double_blocks.0.img_attn.proj.weight"],
        ],
        banned: &["transformer_blocks.0.attn.norm_added_k.weight"],
        hiprec: &[],
        ignore: &[],
        keep: FLUX_KEEP,
        shape_fix: false,
    },
    Family {
        arch: Arch::Sd3,
        name: "sd3",
        detect: &[
            &["transformer_blocks.0.attn.add_q_proj.weight"],
            &["joint_blocks.0.x_block.attn.qkv.weight"],
        ],
        banned: &["transformer_blocks.0.attn.add_q_proj.weight"],
        hiprec: &[],
        ignore: &[],
        keep: &[
            C("final_layer."),
            C("time_text_embed."),
            C("context_embedder."),
            C("t_embedder."),
            C("y_embedder."),
            C("x_embedder."),
            E("proj_out.weight"),
            E("pos_embed"),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::Aura,
        name: "aura",
        detect: &[
            &["double_layers.3.modX.1.weight"],
            &["joint_transformer_blocks.3.ff_context.out_projection.weight"],
        ],
        banned: &["joint_transformer_blocks.3.ff_context.out_projection.weight"],
        hiprec: &[],
        ignore: &[],
        keep: &[
            C("t_embedder."),
            C("init_x_linear."),
            E("modF.1.weight"),
            E("cond_seq_linear.weight"),
            E("final_linear.weight"),
            E("positional_encoding"),
            E("register_tokens"),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::HiDream,
        name: "hidream",
        detect: &[&[
            "caption_projection.0.linear.weight",
            "double_stream_blocks.0.block.ff_i.shared_experts.w3.weight",
        ]],
        banned: &[],
        hiprec: &[".ff_i.gate.weight", "img_emb.emb_pos"],
        ignore: &[],
        keep: &[
            C("p_embedder."),
            C("t_embedder."),
            C("x_embedder."),
            C("final_layer."),
            C(".ff_i.gate.weight"),
            C("caption_projection."),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::Cosmos,
        name: "cosmos",
        detect: &[&[
            "blocks.0.mlp.layer1.weight",
            "blocks.0.adaln_modulation_cross_attn.1.weight",
        ]],
        banned: &[],
        hiprec: &["pos_embedder"],
        ignore: &["_extra_state", "accum_"],
        keep: &[
            C("p_embedder."),
            C("t_embedder."),
            C("t_embedding_norm."),
            C("x_embedder."),
            C("pos_embedder."),
            C("final_layer."),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::Ltxv,
        name: "ltxv",
        detect: &[&[
            "adaln_single.emb.timestep_embedder.linear_2.weight",
            "transformer_blocks.27.scale_shift_table",
            "caption_projection.linear_2.weight",
        ]],
        banned: &[],
        hiprec: &["scale_shift_table"],
        ignore: &[],
        keep: &[
            C("adaln_single."),
            C("caption_projection."),
            C("patchify_proj."),
            C("proj_out."),
            C("scale_shift_table"),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::HyVid,
        name: "hyvid",
        detect: &[&[
            "double_blocks.0.img_attn_proj.weight",
            "txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight",
        ]],
        banned: &[],
        hiprec: &[],
        ignore: &[],
        keep: FLUX_KEEP,
        shape_fix: false,
    },
    Family {
        arch: Arch::Wan,
        name: "wan",
        detect: &[&[
            "blocks.0.self_attn.norm_q.weight",
            "text_embedding.2.weight",
            "head.modulation",
        ]],
        banned: &[],
        hiprec: &[".modulation"],
        ignore: &[],
        keep: &[
            C("modulation."),
            C("patch_embedding."),
            C("text_embedding."),
            C("time_projection."),
            C("time_embedding."),
            C("img_emb."),
            C("head."),
        ],
        shape_fix: false,
    },
    Family {
        arch: Arch::Sdxl,
        name: "sdxl",
        detect: &[
            &[
                "down_blocks.0.downsamplers.0.conv.weight",
                "add_embedding.linear_1.weight",
            ],
            &[
                "input_blocks.3.0.op.weight",
                "input_blocks.6.0.op.weight",
                "output_blocks.2.2.conv.weight",
                "output_blocks.5.2.conv.weight",
            ],
            &["label_emb.0.0.weight"],
        ],
        banned: &[],
        hiprec: &[],
        ignore: &[],
        keep: UNET_KEEP,
        shape_fix: true,
    },
    Family {
        arch: Arch::Sd1,
        name: "sd1",
        detect: &[
            &["down_blocks.0.downsamplers.0.conv.weight"],
            &[
                "input_blocks.3.0.op.weight",
                "input_blocks.6.0.op.weight",
                "input_blocks.9.0.op.weight",
                "output_blocks.2.1.conv.weight",
                "output_blocks.5.2.conv.weight",
                "output_blocks.8.2.conv.weight",
            ],
        ],
        banned: &[],
        hiprec: &[],
        ignore: &[],
        keep: UNET_KEEP,
        shape_fix: true,
    },
    Family {
        arch: Arch::Lumina2,
        name: "lumina2",
        detect: &[&[
            "cap_embedder.1.weight",
            "context_refiner.0.attention.qkv.weight",
        ]],
        banned: &[],
        hiprec: &[],
        ignore: &[],
        keep: &[
            C("t_embedder."),
            C("x_embedder."),
            C("final_layer."),
            C("cap_embedder."),
            C("context_refiner."),
            C("noise_refiner."),
        ],
        shape_fix: false,
    },
];

/// The family of [`Arch::Unknown`]: nothing detected, nothing banned or kept by name; flattened storage allowed,
/// since no runtime that needs the native shapes loads an unknown family anyway.
static UNKNOWN: Family = Family {
    arch: Arch::Unknown,
    name: "unknown",
    detect: &[],
    banned: &[],
    hiprec: &[],
    ignore: &[],
    keep: &[],
    shape_fix: true,
};

/// Prefixes ComfyUI's converter strips when some tensor name starts with them (names without it are then left
/// out of detection: the other models of a full checkpoint).
const MIXED_PREFIXES: [&str; 2] = ["model.diffusion_model.", "model."];
/// Prefixes stripped only when every name starts with them.
const UNIFORM_PREFIXES: [&str; 1] = ["net."];

impl Arch {
    /// Every family, in detection order ([`Arch::Unknown`] excluded).
    pub fn known() -> impl Iterator<Item = Arch> {
        FAMILIES.iter().map(|f| f.arch)
    }

    fn family(self) -> &'static Family {
        FAMILIES.iter().find(|f| f.arch == self).unwrap_or(&UNKNOWN)
    }

    /// The `general.architecture` string (`flux`, `sdxl`, `qwen_image`, ... or `unknown`).
    pub fn name(self) -> &'static str {
        self.family().name
    }

    /// Substrings of the tensor names ComfyUI-GGUF's converter keeps in F32 for this family (`.modulation` of
    /// Wan, `scale_shift_table` of LTX-Video, ...): plain `nn.Parameter`s its loader cannot take as BF16 or as
    /// blocks.
    pub fn keys_hiprec(self) -> &'static [&'static str] {
        self.family().hiprec
    }

    /// True when `name` is one of the tensors this family's high-precision rule covers.
    pub fn is_hiprec(self, name: &str) -> bool {
        self.keys_hiprec().iter().any(|k| name.contains(k))
    }

    /// True when ComfyUI-GGUF's converter drops `name` (`_extra_state` / `accum_` of Cosmos): not weights, and
    /// its loader cannot take them. The writer should leave such tensors out of a GGUF file.
    pub fn is_ignored(self, name: &str) -> bool {
        self.family().ignore.iter().any(|k| name.contains(k))
    }

    /// The reason llama.cpp's patched `llama-quantize` leaves `name` unquantized for this family (the
    /// embedders, conditioning and final layers: `img_in.` of Flux, `time_embed.` of SDXL, `head.` of Wan ...),
    /// or `None`. Substring keys match anywhere; whole-name keys match after the wrapper prefixes.
    pub fn keep_reason(self, name: &str) -> Option<String> {
        let own = strip_wrapper(name);
        self.family().keep.iter().find_map(|k| {
            let hit = match k {
                KeepKey::Contains(s) => name.contains(s).then_some(*s),
                KeepKey::Exact(s) => (own == *s).then_some(*s),
            };
            hit.map(|s| format!("{} keeps '{s}' unquantized", self.name()))
        })
    }

    /// True when rows that no block fits may be stored flattened with `comfy.gguf.orig_shape.<name>` (ComfyUI's
    /// shape fix): the UNet families sd1 and sdxl, as its converter does, and [`Arch::Unknown`].
    pub fn shape_fix(self) -> bool {
        self.family().shape_fix
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = QuantError;
    /// Parses a family name case-insensitively (`flux`, `SDXL`, `qwen_image`, `unknown`).
    fn from_str(s: &str) -> Result<Self> {
        FAMILIES
            .iter()
            .chain(std::iter::once(&UNKNOWN))
            .find(|f| f.name.eq_ignore_ascii_case(s.trim()))
            .map(|f| f.arch)
            .ok_or_else(|| {
                let names: Vec<&str> = FAMILIES
                    .iter()
                    .chain(std::iter::once(&UNKNOWN))
                    .map(|f| f.name)
                    .collect();
                QuantError::config("arch", format!("{s:?}"), names.join(", "))
            })
    }
}

/// `name` without ComfyUI's prefixes (`model.diffusion_model.`, `model.`, `net.`), for whole-name rules.
fn strip_wrapper(name: &str) -> &str {
    MIXED_PREFIXES
        .iter()
        .chain(UNIFORM_PREFIXES.iter())
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

/// The names detection looks at, as ComfyUI's converter (`strip_prefix`) sees them: when some name starts with
/// `model.diffusion_model.` (else `model.`), the names with that prefix, stripped; else, when every name starts
/// with `net.`, all names stripped of it; else the names as they are.
pub fn detection_names<'a>(names: &[&'a str]) -> Vec<&'a str> {
    for p in MIXED_PREFIXES {
        if names.iter().any(|n| n.starts_with(p)) {
            return names.iter().filter_map(|n| n.strip_prefix(p)).collect();
        }
    }
    for p in UNIFORM_PREFIXES {
        if !names.is_empty() && names.iter().all(|n| n.starts_with(p)) {
            return names.iter().filter_map(|n| n.strip_prefix(p)).collect();
        }
    }
    names.to_vec()
}

/// The family of a checkpoint with these tensor names, as ComfyUI-GGUF's converter detects it: the first family
/// (in [`Arch::known`] order) one of whose key lists is wholly present. `Ok(None)` when none matches.
///
/// A matched family whose banned keys are present (a diffusers-format Flux, SD3 or AuraFlow) is an error that
/// names the key and says what to do: GGUF runtimes load the reference key names only.
pub fn detect_arch(names: &[&str]) -> Result<Option<Arch>> {
    let present: HashSet<&str> = detection_names(names).into_iter().collect();
    for family in &FAMILIES {
        let matched = family
            .detect
            .iter()
            .any(|keys| keys.iter().all(|k| present.contains(k)));
        if !matched {
            continue;
        }
        if let Some(key) = family.banned.iter().find(|k| present.contains(*k)) {
            return Err(QuantError::schema(
                key,
                format!(
                    "this is a diffusers-format {} checkpoint; ComfyUI-GGUF, stable-diffusion.cpp and diffusers' \
                     GGUF loader take the reference key names only: convert it to the original format first \
                     (for example load it in ComfyUI and save it with the ModelSave node), write .safetensors or \
                     .parquet output instead, or pass --arch unknown to write it for readers that take tensors \
                     by name",
                    family.name
                ),
            ));
        }
        return Ok(Some(family.arch));
    }
    Ok(None)
}

/// The family to write: `forced` when given (detection skipped; [`Arch::Unknown`] also lets a banned,
/// diffusers-format checkpoint through, for readers that take tensors by name), else the detected family, else
/// [`Arch::Unknown`]. A banned checkpoint with any other `forced` family is still the error of [`detect_arch`]:
/// the file would claim a family its runtimes cannot load from these names.
pub fn resolve_arch(names: &[&str], forced: Option<Arch>) -> Result<Arch> {
    match forced {
        Some(Arch::Unknown) => Ok(Arch::Unknown),
        Some(arch) => detect_arch(names).map(|_| arch),
        None => Ok(detect_arch(names)?.unwrap_or(Arch::Unknown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flux_names() -> Vec<&'static str> {
        vec![
            "double_blocks.0.img_attn.proj.weight",
            "double_blocks.0.img_attn.qkv.weight",
            "double_blocks.0.img_mlp.2.weight",
            "single_blocks.0.linear1.weight",
            "img_in.weight",
            "time_in.in_layer.weight",
        ]
    }

    #[test]
    fn each_family_is_detected_from_its_reference_names() {
        let cases: [(&[&str], Arch); 12] = [
            (&flux_names(), Arch::Flux),
            (
                &[
                    "model.diffusion_model.input_blocks.3.0.op.weight",
                    "model.diffusion_model.input_blocks.6.0.op.weight",
                    "model.diffusion_model.input_blocks.9.0.op.weight",
                    "model.diffusion_model.output_blocks.2.1.conv.weight",
                    "model.diffusion_model.output_blocks.5.2.conv.weight",
                    "model.diffusion_model.output_blocks.8.2.conv.weight",
                    "first_stage_model.decoder.conv_in.weight",
                ],
                Arch::Sd1,
            ),
            (
                &[
                    "model.diffusion_model.label_emb.0.0.weight",
                    "model.diffusion_model.input_blocks.0.0.weight",
                    "conditioner.embedders.1.model.ln_final.weight",
                ],
                Arch::Sdxl,
            ),
            (&["joint_blocks.0.x_block.attn.qkv.weight"], Arch::Sd3),
            (&["double_layers.3.modX.1.weight"], Arch::Aura),
            (
                &[
                    "caption_projection.0.linear.weight",
                    "double_stream_blocks.0.block.ff_i.shared_experts.w3.weight",
                ],
                Arch::HiDream,
            ),
            (
                &[
                    "net.blocks.0.mlp.layer1.weight",
                    "net.blocks.0.adaln_modulation_cross_attn.1.weight",
                ],
                Arch::Cosmos,
            ),
            (
                &[
                    "adaln_single.emb.timestep_embedder.linear_2.weight",
                    "transformer_blocks.27.scale_shift_table",
                    "caption_projection.linear_2.weight",
                ],
                Arch::Ltxv,
            ),
            (
                &[
                    "double_blocks.0.img_attn_proj.weight",
                    "txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight",
                ],
                Arch::HyVid,
            ),
            (
                &[
                    "blocks.0.self_attn.norm_q.weight",
                    "text_embedding.2.weight",
                    "head.modulation",
                    "patch_embedding.weight",
                ],
                Arch::Wan,
            ),
            (
                &[
                    "cap_embedder.1.weight",
                    "context_refiner.0.attention.qkv.weight",
                ],
                Arch::Lumina2,
            ),
            (
                &[
                    "transformer_blocks.0.img_mod.1.weight",
                    "txt_norm.weight",
                    "transformer_blocks.0.attn.norm_added_k.weight",
                    "transformer_blocks.0.attn.add_q_proj.weight",
                ],
                Arch::QwenImage,
            ),
        ];
        for (names, arch) in cases {
            assert_eq!(detect_arch(names).unwrap(), Some(arch), "{names:?}");
        }
        // a list only partly present does not match (SD1's second list needs all six keys)
        assert_eq!(
            detect_arch(&["input_blocks.3.0.op.weight", "input_blocks.6.0.op.weight"]).unwrap(),
            None
        );
    }

    #[test]
    fn diffusers_format_checkpoints_are_refused_with_what_to_do() {
        for (names, family) in [
            (
                &[
                    "transformer_blocks.0.attn.norm_added_k.weight",
                    "transformer_blocks.0.attn.add_q_proj.weight",
                    "single_transformer_blocks.0.proj_out.weight",
                ][..],
                "flux",
            ),
            (&["transformer_blocks.0.attn.add_q_proj.weight"][..], "sd3"),
            (
                &["joint_transformer_blocks.3.ff_context.out_projection.weight"][..],
                "aura",
            ),
        ] {
            let e = detect_arch(names).unwrap_err().to_string();
            assert!(
                e.contains(&format!("diffusers-format {family}"))
                    && e.contains("reference key names")
                    && e.contains("--arch unknown"),
                "{e}"
            );
            // forcing a family does not hide the problem; forcing `unknown` writes it for by-name readers
            assert!(resolve_arch(names, Some(Arch::Flux)).is_err());
            assert_eq!(
                resolve_arch(names, Some(Arch::Unknown)).unwrap(),
                Arch::Unknown
            );
        }
        // diffusers-format SD1 / SDXL UNets are accepted, as by ComfyUI
        let sdxl = [
            "down_blocks.0.downsamplers.0.conv.weight",
            "add_embedding.linear_1.weight",
        ];
        assert_eq!(detect_arch(&sdxl).unwrap(), Some(Arch::Sdxl));
    }

    #[test]
    fn nothing_detected_is_the_unknown_family_and_overrides_win() {
        let terrain = [
            "network.input_blocks.0.0.weight",
            "network.label_emb.0.weight",
            "network.out.2.weight",
        ];
        assert_eq!(detect_arch(&terrain).unwrap(), None);
        assert_eq!(resolve_arch(&terrain, None).unwrap(), Arch::Unknown);
        assert_eq!(Arch::Unknown.name(), "unknown");
        assert_eq!(
            resolve_arch(&terrain, Some(Arch::Sdxl)).unwrap(),
            Arch::Sdxl
        );
        assert_eq!(resolve_arch(&flux_names(), None).unwrap(), Arch::Flux);
        assert_eq!(
            resolve_arch(&flux_names(), Some(Arch::Wan)).unwrap(),
            Arch::Wan
        );
        assert!(resolve_arch(&[], None).is_ok());
    }

    #[test]
    fn names_parse_back_case_insensitively_and_bad_names_list_the_choices() {
        for arch in Arch::known().chain([Arch::Unknown]) {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.name().to_uppercase().parse::<Arch>().unwrap(), arch);
        }
        assert_eq!(Arch::known().count(), 12);
        let e = "sd15".parse::<Arch>().unwrap_err().to_string();
        assert!(
            e.contains("\"sd15\"") && e.contains("qwen_image") && e.contains("hyvid"),
            "{e}"
        );
    }

    #[test]
    fn prefix_rule_follows_comfyui() {
        // a mixed checkpoint: only the UNet's names take part
        let names = [
            "model.diffusion_model.a",
            "first_stage_model.b",
            "model.diffusion_model.c",
        ];
        assert_eq!(detection_names(&names), ["a", "c"]);
        // `net.` only when every name has it
        assert_eq!(detection_names(&["net.a", "net.b"]), ["a", "b"]);
        assert_eq!(detection_names(&["net.a", "b"]), ["net.a", "b"]);
    }

    #[test]
    fn per_family_rules() {
        assert!(Arch::Wan.is_hiprec("blocks.0.modulation"));
        assert!(Arch::Wan.is_hiprec("head.modulation"));
        assert!(!Arch::Flux.is_hiprec("blocks.0.modulation"));
        assert!(Arch::Ltxv.is_hiprec("transformer_blocks.3.scale_shift_table"));
        assert!(Arch::HiDream.is_hiprec("double_stream_blocks.2.block.ff_i.gate.weight"));
        assert!(Arch::Cosmos.is_ignored("blocks.0.self_attn._extra_state"));
        assert!(!Arch::Wan.is_ignored("blocks.0._extra_state"));
        // keep lists: substrings anywhere, whole names after the wrapper prefix
        let r = Arch::Flux
            .keep_reason("guidance_in.in_layer.weight")
            .unwrap();
        assert!(r.contains("flux") && r.contains("guidance_in."), "{r}");
        assert!(Arch::Flux
            .keep_reason("double_blocks.0.img_attn.qkv.weight")
            .is_none());
        assert!(Arch::Sdxl
            .keep_reason("model.diffusion_model.out.2.weight")
            .is_some());
        assert!(Arch::Sdxl
            .keep_reason("model.diffusion_model.output_blocks.8.out.2.weight")
            .is_none());
        assert!(Arch::Sd3.keep_reason("pos_embed").is_some());
        assert!(Arch::Sd3
            .keep_reason("joint_blocks.0.pos_embed_x")
            .is_none());
        assert!(Arch::Wan.keep_reason("time_projection.1.weight").is_some());
        assert!(Arch::Unknown.keep_reason("img_in.weight").is_none());
        assert!(Arch::Sd1.shape_fix() && Arch::Sdxl.shape_fix() && Arch::Unknown.shape_fix());
        assert!(!Arch::Flux.shape_fix() && !Arch::Wan.shape_fix());
    }
}
