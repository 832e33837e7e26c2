//! Tests of [`super::TypePlan::choose`]: generated Flux, SDXL, SD1, SD3 and Wan checkpoints (names and shapes as in
//! the reference checkpoints), overrides, fallbacks per type, float presets, name and dtype errors.

use super::*;
use crate::gguf::{detect_arch, TypeOverrides};
use GgmlType as T;

/// A plan with `RowFallback::Size` (the shape fix and the block fallback table), which most tests check; the
/// default `Quality` has its own test.
fn size_plan(arch: Arch, preset: Preset) -> TypePlan {
    TypePlan {
        row_fallback: RowFallback::Size,
        ..TypePlan::new(arch, preset)
    }
}

/// (name, shape) of a checkpoint, and the names alone.
fn names<'a>(tensors: &[(&'a str, &[usize])]) -> Vec<&'a str> {
    tensors.iter().map(|(n, _)| *n).collect()
}

/// Chooses every tensor with the detected family and `preset`; returns (type, stored shape, reason).
fn choose_all(
    tensors: &[(&str, &[usize])],
    source: Dtype,
    preset: Preset,
) -> (Arch, Vec<TypeChoice>) {
    let arch = detect_arch(&names(tensors))
        .unwrap()
        .unwrap_or(Arch::Unknown);
    let plan = size_plan(arch, preset);
    let choices = tensors
        .iter()
        .map(|(n, s)| plan.choose(n, s, source, None).unwrap())
        .collect();
    (arch, choices)
}

/// What one tensor should get: type, flattened shape (`None`: its own), a piece of the reason (`None`: no reason).
type Expect<'a> = (T, Option<&'a [usize]>, Option<&'a str>);

fn check(tensors: &[(&str, &[usize])], choices: &[TypeChoice], expect: &[Expect<'_>]) {
    for (((name, shape), c), (ty, stored, says)) in tensors.iter().zip(choices).zip(expect) {
        assert_eq!(c.ty, *ty, "{name}: {c:?}");
        match stored {
            None => assert_eq!(c.stored, StoredShape::native(shape), "{name}"),
            Some(flat) => {
                assert_eq!(c.stored.shape, *flat, "{name}");
                assert_eq!(c.stored.orig_shape.as_deref(), Some(*shape), "{name}");
            }
        }
        match says {
            None => assert_eq!(c.reason, None, "{name}"),
            Some(s) => {
                let r = c.reason.as_deref().unwrap_or_default();
                assert!(r.contains(s), "{name}: {r:?} lacks {s:?}");
            }
        }
    }
}

#[test]
fn flux_checkpoint_gets_flux_and_its_mix() {
    let t: &[(&str, &[usize])] = &[
        ("double_blocks.0.img_attn.proj.weight", &[3072, 3072]),
        ("double_blocks.0.img_attn.qkv.weight", &[9216, 3072]),
        ("double_blocks.0.txt_attn.qkv.weight", &[9216, 3072]),
        ("double_blocks.0.img_mlp.2.weight", &[3072, 12288]),
        ("double_blocks.0.img_mlp.0.weight", &[12288, 3072]),
        ("double_blocks.0.img_mod.lin.weight", &[18432, 3072]),
        ("double_blocks.0.img_attn.norm.query_norm.scale", &[128]),
        ("double_blocks.0.img_attn.qkv.bias", &[9216]),
        ("single_blocks.0.linear1.weight", &[21504, 3072]),
        ("single_blocks.0.linear2.weight", &[3072, 15360]),
        ("img_in.weight", &[3072, 64]),
        ("final_layer.adaLN_modulation.1.weight", &[6144, 3072]),
        ("guidance_in.in_layer.weight", &[3072, 256]),
    ];
    let (arch, c) = choose_all(t, Dtype::BF16, Preset::Q4_K_M);
    assert_eq!(arch, Arch::Flux);
    check(
        t,
        &c,
        &[
            (T::Q4_K, None, None),
            (T::Q5_K, None, Some("fused qkv projection: Q4_K_M")),
            (T::Q5_K, None, Some("fused qkv")),
            (T::Q5_K, None, Some("feed-forward down")),
            (T::Q4_K, None, None),
            (T::Q4_K, None, None),
            (T::F32, None, Some("1-D")),
            (T::F32, None, Some("1-D")),
            (T::Q5_K, None, Some("fused qkv")),
            (T::Q4_K, None, None),
            (T::BF16, None, Some("flux keeps 'img_in.'")),
            (T::BF16, None, Some("flux keeps 'final_layer.'")),
            (T::BF16, None, Some("guidance_in.")),
        ],
    );
    // the _S mix stores the projections at the base type
    let (_, s) = choose_all(t, Dtype::BF16, Preset::Q4_K_S);
    assert_eq!(s[1].ty, T::Q4_K);
    assert_eq!(s[1].reason, None);
}

#[test]
fn sdxl_checkpoint_gets_sdxl_and_comfy_shape_fix() {
    let t: &[(&str, &[usize])] = &[
        ("model.diffusion_model.label_emb.0.0.weight", &[1280, 2816]),
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            &[320, 4, 3, 3],
        ),
        (
            "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
            &[320, 320, 3, 3],
        ),
        (
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_v.weight",
            &[640, 640],
        ),
        (
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
            &[640, 2048],
        ),
        (
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.2.weight",
            &[640, 2560],
        ),
        (
            "model.diffusion_model.input_blocks.4.1.proj_in.weight",
            &[640, 640],
        ),
        ("model.diffusion_model.time_embed.0.weight", &[1280, 320]),
        ("model.diffusion_model.out.2.weight", &[4, 320, 3, 3]),
        ("model.diffusion_model.out.0.weight", &[320]),
        (
            "model.diffusion_model.input_blocks.3.0.op.weight",
            &[320, 320, 3, 3],
        ),
    ];
    let (arch, c) = choose_all(t, Dtype::F16, Preset::Q4_K_M);
    assert_eq!(arch, Arch::Sdxl);
    check(
        t,
        &c,
        &[
            (T::F16, None, Some("sdxl keeps 'label_emb.'")),
            (T::F16, None, Some("input_blocks.0.0.weight")),
            (T::Q4_K, Some(&[3600, 256]), Some("comfy.gguf.orig_shape")),
            (T::Q5_K, Some(&[1600, 256]), Some("value projection")),
            (T::Q4_K, None, None),
            (T::Q5_K, None, Some("feed-forward down")),
            (T::Q4_K, Some(&[1600, 256]), Some("rows of 640")),
            (T::F16, None, Some("time_embed.")),
            (T::F16, None, Some("out.2.weight")),
            (T::F16, None, Some("1-D")),
            (T::Q4_K, Some(&[3600, 256]), Some("rows of 3")),
        ],
    );
    let (key, dims) = c[2].stored.metadata(t[2].0).unwrap().unwrap();
    assert_eq!(key, format!("comfy.gguf.orig_shape.{}", t[2].0));
    assert_eq!(dims, [320, 320, 3, 3]);

    // without the shape fix (files for stable-diffusion.cpp / diffusers): native shapes, block fallback or F16
    let plan = TypePlan {
        shape_fix: false,
        ..size_plan(Arch::Sdxl, Preset::Q4_K_M)
    };
    let v = plan.choose(t[3].0, t[3].1, Dtype::F16, None).unwrap();
    assert_eq!(
        (v.ty, v.stored.clone()),
        (T::Q5_1, StoredShape::native(t[3].1))
    );
    let r = v.reason.unwrap();
    assert!(r.contains("value projection") && r.contains("Q5_1"), "{r}");
    let conv = plan.choose(t[2].0, t[2].1, Dtype::F16, None).unwrap();
    assert_eq!(
        (conv.ty, conv.stored),
        (T::F16, StoredShape::native(t[2].1))
    );
    assert!(conv.reason.unwrap().contains("2-D tensors only"));
    // a 2-D tensor that no block fits
    let odd = plan
        .choose(
            "model.diffusion_model.x.weight",
            &[1280, 100],
            Dtype::F16,
            None,
        )
        .unwrap();
    assert_eq!(odd.ty, T::F16);
    assert!(odd.reason.unwrap().contains("no block type does: F16"));
}

#[test]
fn sd1_checkpoint_gets_sd1() {
    let t: &[(&str, &[usize])] = &[
        ("input_blocks.3.0.op.weight", &[320, 320, 3, 3]),
        ("input_blocks.6.0.op.weight", &[640, 640, 3, 3]),
        ("input_blocks.9.0.op.weight", &[1280, 1280, 3, 3]),
        ("output_blocks.2.1.conv.weight", &[1280, 1280, 3, 3]),
        ("output_blocks.5.2.conv.weight", &[1280, 1280, 3, 3]),
        ("output_blocks.8.2.conv.weight", &[640, 640, 3, 3]),
        (
            "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
            &[320, 768],
        ),
        (
            "input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight",
            &[320, 320],
        ),
        ("input_blocks.1.1.norm.weight", &[320]),
    ];
    let (arch, c) = choose_all(t, Dtype::F32, Preset::Q5_K_M);
    assert_eq!(arch, Arch::Sd1);
    assert_eq!(c[0].ty, T::Q5_K);
    assert_eq!(c[0].stored.shape, [3600, 256]);
    assert_eq!((c[6].ty, c[6].stored.orig_shape.is_none()), (T::Q6_K, true));
    assert_eq!(
        (c[7].ty, c[7].stored.shape.clone()),
        (T::Q6_K, vec![400, 256])
    );
    assert_eq!(c[8].ty, T::F32); // an F32 source's 1-D tensor stays F32
}

#[test]
fn sd3_checkpoint_gets_sd3_and_falls_back_on_rows_of_2432() {
    // SD3.5 Large: hidden size 2432 = 9.5 blocks of 256 (stable-diffusion.cpp #446 kept these in F16)
    let t: &[(&str, &[usize])] = &[
        ("joint_blocks.0.x_block.attn.qkv.weight", &[7296, 2432]),
        ("joint_blocks.0.x_block.attn.proj.weight", &[2432, 2432]),
        ("joint_blocks.0.x_block.mlp.fc2.weight", &[2432, 9728]),
        (
            "joint_blocks.0.x_block.adaLN_modulation.1.weight",
            &[14592, 2432],
        ),
        ("pos_embed", &[1, 36864, 2432]),
        ("x_embedder.proj.weight", &[2432, 16, 2, 2]),
        ("context_embedder.weight", &[2432, 4096]),
    ];
    let (arch, c) = choose_all(t, Dtype::F16, Preset::Q4_K_M);
    assert_eq!(arch, Arch::Sd3);
    check(
        t,
        &c,
        &[
            (T::Q5_1, None, Some("fused qkv projection")),
            (
                T::Q4_1,
                None,
                Some("rows of 2432 do not fit Q4_K's 256-element blocks: Q4_1"),
            ),
            (T::Q5_K, None, Some("feed-forward down")),
            (T::Q4_1, None, Some("rows of 2432")),
            (T::F16, None, Some("sd3 keeps 'pos_embed'")),
            (T::F16, None, Some("x_embedder.")),
            (T::F16, None, Some("context_embedder.")),
        ],
    );
    // `wanted` keeps the type the rules asked for, so the report can list what fell back
    assert_eq!((c[1].wanted, c[1].ty), (T::Q4_K, T::Q4_1));
    assert_eq!((c[2].wanted, c[2].ty), (T::Q5_K, T::Q5_K));
    // the qkv reason tells both steps
    let r = c[0].reason.as_deref().unwrap();
    assert!(r.contains("Q5_K") && r.contains("Q5_1"), "{r}");
}

#[test]
fn wan_checkpoint_gets_wan_and_keeps_its_5d_kernel_exact() {
    let t: &[(&str, &[usize])] = &[
        ("blocks.0.self_attn.norm_q.weight", &[1536]),
        ("text_embedding.2.weight", &[1536, 1536]),
        ("head.modulation", &[1, 2, 1536]),
        ("patch_embedding.weight", &[1536, 16, 1, 2, 2]),
        ("blocks.0.self_attn.v.weight", &[1536, 1536]),
        ("blocks.0.self_attn.q.weight", &[1536, 1536]),
        ("blocks.0.cross_attn.v.weight", &[1536, 1536]),
        ("blocks.0.ffn.2.weight", &[1536, 8960]),
        ("blocks.0.ffn.0.weight", &[8960, 1536]),
        ("blocks.0.modulation", &[1, 6, 1536]),
        ("time_projection.1.weight", &[9216, 1536]),
        ("head.head.weight", &[64, 1536]),
    ];
    let (arch, c) = choose_all(t, Dtype::BF16, Preset::Q4_K_M);
    assert_eq!(arch, Arch::Wan);
    check(
        t,
        &c,
        &[
            (T::F32, None, Some("1-D")),
            (T::BF16, None, Some("wan keeps 'text_embedding.'")),
            (
                T::F32,
                None,
                Some("wan keeps '.modulation' in full precision"),
            ),
            (T::F32, None, Some("5-D tensor")),
            (T::Q5_K, None, Some("value projection")),
            (T::Q4_K, None, None),
            (T::Q5_K, None, Some("value projection")),
            (T::Q5_K, None, Some("feed-forward down")),
            (T::Q4_K, None, None),
            (T::F32, None, Some("full precision")),
            (T::BF16, None, Some("time_projection.")),
            (T::BF16, None, Some("head.")),
        ],
    );
    // the 5-D kernel is stored in its own 5 dimensions, no orig_shape key; an F16 source keeps it F16
    assert_eq!(c[3].stored.metadata(t[3].0).unwrap(), None);
    let plan = size_plan(Arch::Wan, Preset::Q8_0);
    let k = plan.choose(t[3].0, t[3].1, Dtype::F16, None).unwrap();
    assert_eq!((k.ty, k.stored.shape), (T::F16, vec![1536, 16, 1, 2, 2]));
    // HunyuanVideo's 5-D img_in.proj: the same rule, whatever the family
    let hy = size_plan(Arch::HyVid, Preset::Q4_K_M)
        .choose(
            "img_in.proj.weight",
            &[3072, 16, 1, 2, 2],
            Dtype::BF16,
            None,
        )
        .unwrap();
    assert_eq!(hy.ty, T::F32);
}

#[test]
fn overrides_win_first_match_over_mixes_and_keep_rules_but_not_loader_rules() {
    let mut plan = size_plan(Arch::Flux, Preset::Q4_K_M);
    plan.overrides = TypeOverrides::parse(&[
        r"double_blocks\.0\..*qkv=Q8_0",
        "qkv=Q6_K",
        "img_in=Q8_0",
        "norm=Q4_0",
        "final_layer=Q4_K",
    ])
    .unwrap();
    let ty = |name: &str, shape: &[usize]| plan.choose(name, shape, Dtype::BF16, None).unwrap();
    let a = ty("double_blocks.0.img_attn.qkv.weight", &[9216, 3072]);
    assert_eq!(a.ty, T::Q8_0);
    assert!(a
        .reason
        .unwrap()
        .contains(r"--tensor-type 'double_blocks\.0\..*qkv=Q8_0'"));
    assert_eq!(
        ty("double_blocks.5.img_attn.qkv.weight", &[9216, 3072]).ty,
        T::Q6_K
    );
    // an override beats the family's keep list and the layer policy's Keep
    assert_eq!(ty("img_in.weight", &[3072, 64]).ty, T::Q8_0);
    let kept = plan
        .choose(
            "img_in.weight",
            &[3072, 64],
            Dtype::BF16,
            Some("first or last layer ('img_in.')"),
        )
        .unwrap();
    assert_eq!(kept.ty, T::Q8_0);
    // ... not the loader rules (1-D here)
    let norm = ty("double_blocks.0.img_attn.norm.query_norm.scale", &[128]);
    assert_eq!(norm.ty, T::F32);
    // an override whose blocks do not fit falls back, and says both
    let f = ty("final_layer.linear.weight", &[64, 3072 + 32]);
    assert_eq!(f.ty, T::Q4_1);
    let r = f.reason.unwrap();
    assert!(
        r.contains("--tensor-type 'final_layer=Q4_K'") && r.contains("Q4_1"),
        "{r}"
    );
}

#[test]
fn layer_policy_keep_maps_to_sixteen_bit_by_source() {
    let plan = size_plan(Arch::Unknown, Preset::Q4_K_M);
    let keep = Some("first or last layer ('conv_in.')");
    for (source, ty) in [
        (Dtype::F32, T::F16),
        (Dtype::F16, T::F16),
        (Dtype::BF16, T::BF16),
    ] {
        let c = plan
            .choose("conv_in.weight", &[64, 4, 3, 3], source, keep)
            .unwrap();
        assert_eq!(c.ty, ty, "{source:?}");
        assert_eq!(c.stored, StoredShape::native(&[64, 4, 3, 3]));
        assert_eq!(c.reason.as_deref(), keep);
    }
    // a float preset keeps its own type; F32 never shrinks a kept tensor
    let f32_plan = size_plan(Arch::Unknown, Preset::F32);
    assert_eq!(
        f32_plan
            .choose("conv_in.weight", &[64, 4, 3, 3], Dtype::BF16, keep)
            .unwrap()
            .ty,
        T::F32
    );
    let bf16_plan = size_plan(Arch::Flux, Preset::BF16);
    let c = bf16_plan
        .choose("img_in.weight", &[3072, 64], Dtype::F32, None)
        .unwrap();
    assert_eq!((c.ty, c.reason), (T::BF16, None));
}

#[test]
fn unknown_family_flattens_like_comfy_and_falls_back_per_type() {
    // the terrain UNet: 3x3 and 1x1 convolutions, narrow linear layers, F32; its small tensors stay 16-bit
    let default = size_plan(Arch::Unknown, Preset::Q4_K_M);
    let small = default
        .choose(
            "network.input_blocks.1.0.emb_layers.1.weight",
            &[64, 128],
            Dtype::F32,
            None,
        )
        .unwrap();
    assert_eq!((small.ty, small.stored.orig_shape), (T::F16, None));
    assert!(small.reason.unwrap().contains("fewer than 65536 elements"));
    let large = default
        .choose(
            "network.middle_block.0.in_layers.2.weight",
            &[128, 128, 3, 3],
            Dtype::F32,
            None,
        )
        .unwrap();
    assert_eq!((large.ty, large.stored.shape), (T::Q4_K, vec![576, 256]));
    // the flattening and fallbacks, on tensors of any size
    let plan = TypePlan {
        sixteen_bit_below: 0,
        ..default
    };
    let c = |name: &str, shape: &[usize]| plan.choose(name, shape, Dtype::F32, None).unwrap();
    let qkv = c("network.input_blocks.11.1.qkv.weight", &[192, 64, 1, 1]);
    assert_eq!((qkv.ty, qkv.stored.shape), (T::Q5_K, vec![48, 256]));
    let emb = c("network.input_blocks.1.0.emb_layers.1.weight", &[64, 128]);
    assert_eq!((emb.ty, emb.stored.shape), (T::Q4_K, vec![32, 256]));
    // 32 x 36 x 1 x 1 = 1152 elements: no 256 row, 36 rows of 32 in Q4_K's fallback
    let odd = c("network.x.weight", &[32, 36, 1, 1]);
    assert_eq!((odd.ty, odd.stored.shape), (T::Q4_1, vec![36, 32]));
    assert!(odd.reason.unwrap().contains("comfy.gguf.orig_shape"));
    // no 32 divides 1100 x 3: 16-bit
    let f = c("network.y.weight", &[1100, 3]);
    assert_eq!((f.ty, f.stored.orig_shape), (T::F16, None));
    // a 32-element-block preset on rows of 3 flattens to rows of 256 too
    let q4 = TypePlan {
        sixteen_bit_below: 0,
        ..size_plan(Arch::Unknown, Preset::Q4_0)
    }
    .choose("network.z.weight", &[32, 32, 3, 3], Dtype::F32, None)
    .unwrap();
    assert_eq!((q4.ty, q4.stored.shape), (T::Q4_0, vec![36, 256]));
}

#[test]
fn fallbacks_per_type_on_rows_of_320_and_of_100() {
    use crate::gguf::fallback::block_fallback;
    // Flux never flattens: every 256-element-block preset falls back to its table entry on rows of 320, and to
    // 16-bit on rows no 32 divides; 32-element-block presets fit 320 as they are
    let plan = |p: Preset| size_plan(Arch::Flux, p);
    for preset in Preset::all() {
        let base = preset.base();
        let c = plan(preset)
            .choose("blocks.0.attn.proj.weight", &[640, 320], Dtype::F16, None)
            .unwrap();
        let want = if base.fits_row(320) {
            base
        } else {
            block_fallback(base).unwrap()
        };
        assert_eq!(c.ty, want, "{preset}");
        assert_eq!(c.stored, StoredShape::native(&[640, 320]));
        let c = plan(preset)
            .choose("blocks.0.attn.proj.weight", &[640, 100], Dtype::BF16, None)
            .unwrap();
        let want = if base.is_float() { base } else { T::BF16 };
        assert_eq!(c.ty, want, "{preset}");
    }
}

#[test]
fn names_past_127_bytes_and_non_float_tensors_are_errors_naming_them() {
    let plan = size_plan(Arch::Flux, Preset::Q4_K_M);
    let ok = "a".repeat(127);
    assert!(plan.choose(&ok, &[4096, 4096], Dtype::F16, None).is_ok());
    let long = format!("{}.weight", "double_blocks.0.".repeat(8));
    assert_eq!(long.len(), 135);
    let e = plan
        .choose(&long, &[8], Dtype::F16, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&long) && e.contains("135 bytes") && e.contains("127"),
        "{e}"
    );
    assert!(check_tensor_name(&"é".repeat(64)).is_err()); // 128 bytes in 64 characters
    let e = plan
        .choose("position_ids", &[1, 77], Dtype::I64, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position_ids") && e.contains("I64"), "{e}");
}

#[test]
fn quality_fallback_gives_q8_0_to_rows_no_k_block_fits() {
    let plan = TypePlan::new(Arch::Unknown, Preset::Q4_K_M);
    assert_eq!(plan.row_fallback, RowFallback::Quality);
    let c = |name: &str, shape: &[usize]| plan.choose(name, shape, Dtype::F32, None).unwrap();
    // rows of 3 x 3 x 128: no 256 row, Q8_0 flattened to rows of 32 (the family allows the shape fix)
    let conv = c(
        "network.middle_block.0.in_layers.2.weight",
        &[128, 128, 3, 3],
    );
    assert_eq!(
        (conv.ty, conv.stored.shape.clone()),
        (T::Q8_0, vec![4608, 32])
    );
    assert!(conv.reason.unwrap().contains("Q8_0"));
    // rows of 320 in a family without the shape fix: Q8_0 in its own shape; rows of 256 keep the preset's type
    let flux = TypePlan::new(Arch::Flux, Preset::Q4_K_M);
    let linear2 = flux
        .choose(
            "single_blocks.0.linear2.weight",
            &[3072, 15360 + 320],
            Dtype::BF16,
            None,
        )
        .unwrap();
    assert_eq!((linear2.ty, linear2.stored.orig_shape), (T::Q8_0, None));
    let proj = flux
        .choose(
            "double_blocks.0.img_attn.proj.weight",
            &[3072, 3072],
            Dtype::BF16,
            None,
        )
        .unwrap();
    assert_eq!(proj.ty, T::Q4_K);
    // 32-element-block presets are not affected; rows no 32 divides still end in 16-bit
    let q4 = TypePlan::new(Arch::Flux, Preset::Q4_0)
        .choose("x.weight", &[3072, 320], Dtype::F16, None)
        .unwrap();
    assert_eq!(q4.ty, T::Q4_0);
    let odd = flux
        .choose("y.weight", &[1280, 100], Dtype::F16, None)
        .unwrap();
    assert_eq!(odd.ty, T::F16);
    assert_eq!("size".parse::<RowFallback>().unwrap(), RowFallback::Size);
    let err = "smallest".parse::<RowFallback>().unwrap_err().to_string();
    assert!(err.contains("smallest") && err.contains("quality"), "{err}");
}

#[test]
fn pure_gives_every_quantized_tensor_the_base_type_and_leave_output_keeps_the_output() {
    use crate::gguf::MetaValue;
    let flux = TypePlan::new(Arch::Flux, Preset::Q4_K_M);
    let pure = TypePlan {
        pure: true,
        ..flux.clone()
    };
    let qkv = (
        "double_blocks.0.img_attn.qkv.weight",
        &[9216usize, 3072][..],
    );
    let small = ("double_blocks.0.img_mod.lin.weight", &[64usize, 256][..]);
    let c = |plan: &TypePlan, (name, shape): (&str, &[usize]), keep: Option<&str>| {
        plan.choose(name, shape, Dtype::BF16, keep).unwrap().ty
    };
    // the mix bumps the fused qkv, the keep rules keep the small and the policy-kept tensors; --pure does neither
    assert_eq!(c(&flux, qkv, None), T::Q5_K);
    assert_eq!(c(&pure, qkv, None), T::Q4_K);
    assert_eq!(c(&flux, small, None), T::BF16);
    assert_eq!(c(&pure, small, None), T::Q4_K);
    assert_eq!(c(&pure, qkv, Some("first layer")), T::Q4_K);
    assert_eq!(c(&pure, ("img_in.weight", &[3072, 256]), None), T::Q4_K);
    // the loader rules and the overrides still apply; rows still get fitted
    assert_eq!(c(&pure, ("final_layer.norm.scale", &[3072]), None), T::F32);
    let forced = TypePlan {
        overrides: TypeOverrides::parse(&["qkv=Q8_0".to_string()]).unwrap(),
        ..pure.clone()
    };
    assert_eq!(c(&forced, qkv, None), T::Q8_0);
    assert_eq!(c(&pure, ("x.weight", &[3072, 320]), None), T::Q8_0);
    // a language model: no output / value / ffn-down bumps under --pure; --leave-output-tensor keeps the output
    let names = [
        "token_embd.weight",
        "blk.0.attn_v.weight",
        "blk.0.ffn_down.weight",
        "output.weight",
    ];
    let meta = vec![
        ("general.architecture".to_string(), MetaValue::from("llama")),
        ("llama.block_count".to_string(), MetaValue::U32(1)),
    ];
    let llm = TypePlan {
        llm: crate::gguf::llm_mix::LlmModel::detect(&meta, &names),
        ..TypePlan::new(Arch::Unknown, Preset::Q4_K_M)
    };
    let l = |plan: &TypePlan, name: &str| plan.choose(name, &[512, 512], Dtype::F16, None).unwrap();
    assert_eq!(l(&llm, "output.weight").ty, T::Q6_K);
    assert_eq!(l(&llm, "blk.0.attn_v.weight").ty, T::Q6_K);
    let llm_pure = TypePlan {
        pure: true,
        ..llm.clone()
    };
    for name in names {
        assert_eq!(l(&llm_pure, name).ty, T::Q4_K, "{name}");
    }
    let leave = TypePlan {
        leave_output: true,
        ..llm.clone()
    };
    let out = l(&leave, "output.weight");
    assert_eq!(out.ty, T::F16);
    assert!(out.reason.unwrap().contains("--leave-output-tensor"));
    assert_eq!(l(&leave, "blk.0.attn_v.weight").ty, T::Q6_K);
    let overridden = TypePlan {
        overrides: TypeOverrides::parse(&["^output=Q8_0".to_string()]).unwrap(),
        ..leave
    };
    assert_eq!(l(&overridden, "output.weight").ty, T::Q8_0);
}

#[test]
fn the_llama_fallback_is_llama_quantizes_table_in_the_own_shape() {
    let plan = |preset| TypePlan {
        row_fallback: RowFallback::Llama,
        ..TypePlan::new(Arch::Unknown, preset)
    };
    // rows of 896 (Qwen2-0.5B's width): no 256-element block fits, 32 does
    let c = |preset, shape: &[usize]| {
        plan(preset)
            .choose("w.weight", shape, Dtype::F16, None)
            .unwrap()
    };
    for (preset, want) in [
        (Preset::Q4_K_M, T::Q5_0),
        (Preset::Q5_K_M, T::Q5_1),
        (Preset::Q6_K, T::Q8_0),
        (Preset::Q3_K_M, T::Q4_0),
        (Preset::Q2_K, T::Q4_0),
        (Preset::IQ4_XS, T::IQ4_NL),
    ] {
        let choice = c(preset, &[4864, 896]);
        assert_eq!(
            (choice.ty, choice.stored.orig_shape),
            (want, None),
            "{preset}"
        );
    }
    // never flattened, even in a family with the shape fix; rows no 32 divides are 16-bit
    assert_eq!(c(Preset::Q4_K_M, &[128, 100]).ty, T::F16);
    assert_eq!("llama".parse::<RowFallback>().unwrap(), RowFallback::Llama);
    assert_eq!(RowFallback::Llama.name(), "llama");
}
