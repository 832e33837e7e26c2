//! Which ggml type each tensor of a checkpoint gets in a GGUF file, and the shape it is stored under: a pure
//! function of its name, shape and source dtype, the model family, the preset and the `--tensor-type`
//! overrides. [`TypePlan::choose`] applies, in order (the first rule that decides, decides):
//!
//! 1. the loader rules, which nothing overrides (ComfyUI-GGUF's converter; its loader needs them): 1-D tensors,
//!    tensors of at most 1024 elements, the family's `keys_hiprec` and 5-D kernels are stored exactly, F16 from
//!    an F16 source and F32 otherwise ([`full_precision`]), in their own shape;
//! 2. the first `--tensor-type REGEX=TYPE` override that matches, then `--leave-output-tensor` (`output.weight`
//!    in full precision, as llama-quantize leaves it);
//! 3. the keep rules, 16-bit ([`sixteen_bit`]; a float preset's own type): the layer policy's `Decision::Keep`
//!    (first / last layers, keep patterns, small tensors), the family's unquantized list (llama.cpp's patch for
//!    ComfyUI-GGUF), tensors of fewer than [`SIXTEEN_BIT_BELOW_ELEMENTS`] elements, and, in families that are
//!    not flattened, tensors of 3 or 4 dimensions (that patch and ComfyUI-GGUF quantize 2-D tensors only);
//! 4. the preset's type, bumped for the value / fused-qkv / ffn-down projections of the `_M` / `_L` mixes.
//!
//! A language model re-quantized from its GGUF ([`TypePlan::llm`]) takes llama-quantize's rules instead of rules 3
//! and 4 ([`crate::gguf::llm_mix`]): the tensors it leaves unquantized keep their precision, the others get its
//! mix; the diffusion layer policy (first / last layers, small tensors) does not apply.
//!
//! `--pure` ([`TypePlan::pure`], llama-quantize's name) skips rules 3 and 4 but for what a loader needs: every
//! tensor that is quantized at all gets the preset's base type (no mix bumps, no 16-bit keeps of small or edge
//! layers); the loader rules, the overrides and the row fitting still apply.
//!
//! A block type must then fit the stored rows (the last axis, `ne0`): when it does not, a 256-element-block type
//! goes to Q8_0 ([`RowFallback::Quality`], the default) or ([`RowFallback::Size`]) is flattened to rows of 256
//! when its family allows ComfyUI's shape fix and 256 divides its size, else falls back to [`block_fallback`]'s
//! type; the fallback is stored in its own shape, or flattened to rows of 32; else the tensor is [`sixteen_bit`].
//! [`RowFallback::Llama`] (the default for a language model from its GGUF) takes llama-quantize's table instead,
//! never flattened.
//! Every choice other than the preset's plain type carries its reason, for the run report.

use crate::checkpoint::Dtype;
use crate::error::{QuantError, Result};
use crate::gguf::arch::Arch;
use crate::gguf::fallback::{block_fallback, full_precision, llama_fallback, sixteen_bit};
use crate::gguf::llm_mix::{is_quantized, LlmModel};
use crate::gguf::overrides::TypeOverrides;
use crate::gguf::preset::{role_of, Preset, Role};
use crate::gguf::stored_shape::StoredShape;
use crate::gguf::GgmlType;
use std::str::FromStr;

/// Longest tensor name, in bytes (ComfyUI-GGUF's `MAX_TENSOR_NAME_LENGTH`; stable-diffusion.cpp builds ggml with
/// `GGML_MAX_NAME` 128, terminator included).
pub const MAX_TENSOR_NAME_BYTES: usize = 127;

/// The output projection of a language model in llama.cpp's names (what `--leave-output-tensor` leaves alone).
pub const OUTPUT_TENSOR: &str = "output.weight";

/// Tensors of at most this many elements are stored exactly (ComfyUI-GGUF's `QUANTIZATION_THRESHOLD`).
pub const SMALL_TENSOR_ELEMENTS: usize = 1024;

/// Tensors of fewer elements are kept in 16-bit (rule 3). Small layers carry most of a model's output error and
/// little of its size: on the terrain UNet (485 of its 534 weight tensors are this small, 36% of its weights),
/// llama.cpp's Q8_0 on them alone costs 0.025 output rel-error, and Q4_K_M with them in F16 has 0.03 x the
/// output error of Q4_K_M on every tensor (docs/GGUF_TYPES.md). A Flux, SD or Wan checkpoint has next to none.
pub const SIXTEEN_BIT_BELOW_ELEMENTS: usize = 1 << 16;

/// Row length of ComfyUI's shape fix (one K-quant super-block).
const FLAT_ROW: usize = 256;
/// Row length of a flattened tensor whose size 256 does not divide (one legacy block).
const FLAT_ROW_SMALL: usize = 32;

/// An error when `name` is longer than [`MAX_TENSOR_NAME_BYTES`], naming it.
pub fn check_tensor_name(name: &str) -> Result<()> {
    if name.len() <= MAX_TENSOR_NAME_BYTES {
        return Ok(());
    }
    Err(QuantError::schema(
        name,
        format!(
            "the name is {} bytes; GGUF runtimes take at most {MAX_TENSOR_NAME_BYTES} (ComfyUI-GGUF, \
             stable-diffusion.cpp): rename the tensor in the checkpoint, or write .safetensors or .parquet output",
            name.len()
        ),
    ))
}

/// What a tensor gets whose rows the wanted 256-element-block type (a K-quant, IQ4_XS) does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowFallback {
    /// Q8_0: where llama.cpp keeps such a tensor in F16, half its size at the same output quality (measured on the
    /// terrain UNet: output error at or below the F16 fallback's, while every 4-bit fallback has 5-8 x it).
    #[default]
    Quality,
    /// The nearest size: ComfyUI's shape fix to rows of 256 where the family allows it, else the
    /// [`block_fallback`] table (closest weight error at about the same size).
    Size,
    /// llama-quantize's table ([`llama_fallback`]: Q2_K / Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, Q4_K -> Q5_0, Q5_K ->
    /// Q5_1, Q6_K -> Q8_0), in the tensor's own shape: the default for a language model re-quantized from its GGUF, so
    /// that its file has the types and size of llama-quantize's.
    Llama,
}

impl RowFallback {
    /// Its name as `--fallback` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quality => "quality",
            Self::Size => "size",
            Self::Llama => "llama",
        }
    }
}

impl FromStr for RowFallback {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "quality" => Ok(Self::Quality),
            "size" => Ok(Self::Size),
            "llama" => Ok(Self::Llama),
            _ => Err(QuantError::config(
                "gguf_fallback (--fallback)",
                s,
                "quality (Q8_0 for rows no K-quant block fits), size (the shape fix and the block fallback table) \
                 or llama (llama-quantize's table)",
            )),
        }
    }
}

/// Everything that decides the types of a run's tensors.
#[derive(Debug, Clone)]
pub struct TypePlan {
    /// The model family ([`crate::gguf::resolve_arch`]).
    pub arch: Arch,
    /// The whole-model preset.
    pub preset: Preset,
    /// `--tensor-type` overrides.
    pub overrides: TypeOverrides,
    /// Flatten tensors whose rows no block fits, with `comfy.gguf.orig_shape.<name>`, in the families that
    /// allow it ([`Arch::shape_fix`]: sd1, sdxl, unknown). On by default, as ComfyUI-GGUF's converter; off for
    /// files stable-diffusion.cpp or diffusers must load (they read native shapes only).
    pub shape_fix: bool,
    /// Keep the family's unquantized tensors ([`Arch::keep_reason`]) in 16-bit. On by default.
    pub family_keep: bool,
    /// Tensors of fewer elements are kept in 16-bit ([`SIXTEEN_BIT_BELOW_ELEMENTS`] by default; 0: none).
    pub sixteen_bit_below: usize,
    /// What rows that a 256-element-block type does not fit get.
    pub row_fallback: RowFallback,
    /// A language model from a GGUF source: llama-quantize's per-tensor rules replace rules 3 and 4.
    pub llm: Option<LlmModel>,
    /// `--pure`: every quantized tensor at the preset's base type (no mixes, no keep rules but the loaders').
    pub pure: bool,
    /// `--leave-output-tensor`: `output.weight` stays in full precision.
    pub leave_output: bool,
}

/// The type and layout of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChoice {
    /// The ggml type.
    pub ty: GgmlType,
    /// The type the rules wanted before the rows were fitted: `ty` differs from it, or `stored` is flattened,
    /// when the rows did not fit its blocks (the run report lists those tensors).
    pub wanted: GgmlType,
    /// The shape it is stored under, and the own shape when flattened.
    pub stored: StoredShape,
    /// Why it is not the preset's base type in its own shape (a loader rule, an override, a keep rule, a mix's
    /// bump, a fallback), or `None`.
    pub reason: Option<String>,
}

impl TypeChoice {
    /// Whether the rows did not fit the wanted type's blocks and a wider type stores them (the run report's
    /// fallbacks; a flattened layout of the wanted type is not one).
    pub fn fell_back(&self) -> bool {
        self.ty != self.wanted
    }
}

impl TypePlan {
    /// A plan with no overrides, the shape fix and the family keep rules on.
    pub fn new(arch: Arch, preset: Preset) -> Self {
        Self {
            arch,
            preset,
            overrides: TypeOverrides::default(),
            shape_fix: true,
            family_keep: true,
            sixteen_bit_below: SIXTEEN_BIT_BELOW_ELEMENTS,
            row_fallback: RowFallback::Quality,
            llm: None,
            pure: false,
            leave_output: false,
        }
    }

    /// The type of tensor `name` of `shape` and `source` dtype. `policy_keep` is the reason of the layer policy's
    /// `Decision::Keep` for it, if any. Errors: a name longer than [`MAX_TENSOR_NAME_BYTES`], a source dtype that
    /// is not F32 / F16 / BF16 / F64.
    pub fn choose(
        &self,
        name: &str,
        shape: &[usize],
        source: Dtype,
        policy_keep: Option<&str>,
    ) -> Result<TypeChoice> {
        check_tensor_name(name)?;
        if !matches!(source, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(QuantError::schema(
                name,
                format!(
                    "is {}; GGUF output takes F32, F16, BF16 and F64 tensors: convert it, or leave it out",
                    source.name()
                ),
            ));
        }
        if let Some(reason) = self.loader_rule(name, shape) {
            let ty = full_precision(source);
            return Ok(self.finish(ty, ty, StoredShape::native(shape), vec![reason]));
        }
        let (wanted, mut reasons) = self.wanted_type(name, shape, source, policy_keep);
        let (ty, stored) = self.fit(wanted, shape, source, &mut reasons);
        Ok(self.finish(wanted, ty, stored, reasons))
    }

    /// Rule 1: the tensors stored exactly, whatever else applies.
    fn loader_rule(&self, name: &str, shape: &[usize]) -> Option<String> {
        let n: usize = shape.iter().product();
        if shape.len() <= 1 {
            return Some(format!("{}-D tensor, stored exactly", shape.len()));
        }
        if n <= SMALL_TENSOR_ELEMENTS {
            return Some(format!(
                "at most {SMALL_TENSOR_ELEMENTS} elements, stored exactly"
            ));
        }
        if let Some(key) = self.arch.keys_hiprec().iter().find(|k| name.contains(*k)) {
            return Some(format!(
                "{} keeps '{key}' in full precision (its loader takes it as a plain tensor)",
                self.arch
            ));
        }
        if shape.len() > 4 {
            return Some(format!(
                "{}-D tensor, stored exactly in its own shape (as ComfyUI-GGUF stores video kernels)",
                shape.len()
            ));
        }
        None
    }

    /// Rules 2 to 4: the type the tensor should have if its rows allowed.
    fn wanted_type(
        &self,
        name: &str,
        shape: &[usize],
        source: Dtype,
        policy_keep: Option<&str>,
    ) -> (GgmlType, Vec<String>) {
        if let Some(o) = self.overrides.find(name) {
            return (o.ty, vec![format!("--tensor-type '{}'", o.arg)]);
        }
        if self.leave_output && name == OUTPUT_TENSOR {
            let ty = full_precision(source);
            return (ty, vec![format!("--leave-output-tensor: {ty}")]);
        }
        if let Some(llm) = &self.llm {
            return self.llm_type(llm, name, shape, source);
        }
        let keep = |why: String| (self.keep_type(source), vec![why]);
        let kept_nd = || {
            (!self.flattens() && shape.len() >= 3).then(|| {
                keep(format!(
                    "{}-D tensor of {}: ComfyUI-GGUF's loader and llama.cpp's patch quantize 2-D tensors only",
                    shape.len(),
                    self.arch
                ))
            })
        };
        if self.pure {
            return kept_nd().unwrap_or((self.preset.base(), vec![]));
        }
        if let Some(why) = policy_keep {
            return keep(why.to_string());
        }
        if self.family_keep {
            if let Some(why) = self.arch.keep_reason(name) {
                return keep(why);
            }
        }
        let n: usize = shape.iter().product();
        if n < self.sixteen_bit_below {
            return keep(format!(
                "fewer than {} elements: small layers carry much of the output error for little of the size",
                self.sixteen_bit_below
            ));
        }
        if let Some(kept) = kept_nd() {
            return kept;
        }
        let role = role_of(name);
        let ty = self.preset.type_for(role);
        let reasons = match role {
            Some(role) if ty != self.preset.base() => vec![format!(
                "{} projection: {} stores it as {ty}",
                role_name(role),
                self.preset
            )],
            _ => vec![],
        };
        (ty, reasons)
    }

    /// Rules 3 and 4 for a language model: llama-quantize's.
    fn llm_type(
        &self,
        llm: &LlmModel,
        name: &str,
        shape: &[usize],
        source: Dtype,
    ) -> (GgmlType, Vec<String>) {
        let base = self.preset.base();
        if !is_quantized(name, shape.len()) {
            let ty = full_precision(source);
            return (
                ty,
                vec![format!("llama-quantize leaves it unquantized: {ty}")],
            );
        }
        if base.is_float() || self.pure {
            return (base, vec![]);
        }
        match llm.type_for(self.preset, name, ggml_row(shape)) {
            Some(ty) => (
                ty,
                vec![format!("{}'s {} mix: {ty}", llm.arch, self.preset)],
            ),
            None => (base, vec![]),
        }
    }

    /// The 16-bit type of a kept tensor: a float preset's own type, else [`sixteen_bit`].
    fn keep_type(&self, source: Dtype) -> GgmlType {
        let base = self.preset.base();
        if base.is_float() {
            base
        } else {
            sixteen_bit(source)
        }
    }

    fn flattens(&self) -> bool {
        self.shape_fix && self.arch.shape_fix()
    }

    /// The type and layout that store `ty`'s intent: its own shape if its blocks fit, else (see
    /// [`RowFallback`]) Q8_0 or flattened to rows of 256 or the block fallback, in its own shape or flattened to
    /// rows of 32, else 16-bit.
    fn fit(
        &self,
        ty: GgmlType,
        shape: &[usize],
        source: Dtype,
        reasons: &mut Vec<String>,
    ) -> (GgmlType, StoredShape) {
        let cols = ggml_row(shape);
        if ty.fits_row(cols) {
            return (ty, StoredShape::native(shape));
        }
        let unfit = format!(
            "rows of {cols} do not fit {ty}'s {}-element blocks",
            ty.block_len()
        );
        let llama = self.row_fallback == RowFallback::Llama;
        let flattened = |to: GgmlType, row: usize| {
            StoredShape::flattened(shape, row)
                .filter(|_| self.flattens() && !llama && row.is_multiple_of(to.block_len()))
        };
        let quality = self.row_fallback == RowFallback::Quality && ty.block_len() > FLAT_ROW_SMALL;
        let fb = if quality {
            Some(GgmlType::Q8_0)
        } else if llama {
            llama_fallback(ty)
        } else {
            block_fallback(ty)
        };
        let (to, stored) = if let Some(stored) = flattened(ty, FLAT_ROW).filter(|_| !quality) {
            (ty, stored)
        } else if let Some(fb) = fb.filter(|fb| fb.fits_row(cols)) {
            (fb, StoredShape::native(shape))
        } else if let Some(stored) = flattened(fb.unwrap_or(ty), FLAT_ROW_SMALL) {
            (fb.unwrap_or(ty), stored)
        } else {
            let float = self.keep_type(source);
            reasons.push(format!("{unfit}, and no block type does: {float}"));
            return (float, StoredShape::native(shape));
        };
        let fell_back = if to == ty {
            String::new()
        } else {
            format!(": {to}")
        };
        let how = match &stored.orig_shape {
            Some(_) => format!(", stored as {:?} with comfy.gguf.orig_shape", stored.shape),
            None => String::new(),
        };
        reasons.push(format!("{unfit}{fell_back}{how}"));
        (to, stored)
    }

    fn finish(
        &self,
        wanted: GgmlType,
        ty: GgmlType,
        stored: StoredShape,
        reasons: Vec<String>,
    ) -> TypeChoice {
        let plain = ty == self.preset.base() && stored.orig_shape.is_none();
        TypeChoice {
            ty,
            wanted,
            stored,
            reason: (!plain && !reasons.is_empty()).then(|| reasons.join("; ")),
        }
    }
}

/// Elements of a ggml row of `shape`: its last axis.
fn ggml_row(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Value => "value",
        Role::FusedQkv => "fused qkv",
        Role::FfnDown => "feed-forward down",
    }
}

#[cfg(test)]
#[path = "type_choice_tests.rs"]
mod tests;
