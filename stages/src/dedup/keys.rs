//! Dedup's per-row work as a row function (`medtune_dedup_keys`): each row's normalised key
//! text hashed for exact duplicates and, with near-duplicate detection on, its MinHash
//! signature. Deciding which rows are duplicates needs every earlier row, so the stage does
//! that in row order over what this answers.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, FixedSizeBinaryBuilder, ListBuilder, StructArray, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use medtune_formats::normalize::key_hash;
use medtune_pipeline::{Result, RowFunction};
use rayon::prelude::*;

use super::minhash::MinHasher;
use super::DedupConfig;
use crate::shared::examples::ExampleRows;
use crate::shared::mapped::{parse_settings, struct_of};

/// Struct field: the key text's 128-bit hash (little-endian).
pub const HASH: &str = "hash";
/// Struct field: whether the normalised key text is empty.
pub const EMPTY: &str = "empty";
/// Struct field: the MinHash signature (null without near-duplicate detection, or for a
/// text too short to shingle).
pub const SIGNATURE: &str = "signature";

/// The `medtune_dedup_keys` row function.
pub struct DedupKeys;

/// A call's settings, prepared: the config and its MinHash permutations.
pub struct Prepared {
    config: DedupConfig,
    hasher: Option<MinHasher>,
}

impl RowFunction for DedupKeys {
    const NAME: &'static str = "medtune_dedup_keys";
    type Prepared = Prepared;

    fn output_fields() -> Fields {
        vec![
            Field::new(HASH, DataType::FixedSizeBinary(16), false),
            Field::new(EMPTY, DataType::Boolean, false),
            Field::new(
                SIGNATURE,
                DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, true))),
                true,
            ),
        ]
        .into()
    }

    fn prepare(settings: &str) -> Result<Prepared> {
        let config: DedupConfig = parse_settings(Self::NAME, settings)?;
        let near = &config.near;
        let hasher = near
            .enabled
            .then(|| MinHasher::new(near.bands * near.rows, near.ngram, near.seed));
        Ok(Prepared { config, hasher })
    }

    fn map(prepared: &Prepared, batch: &RecordBatch) -> Result<StructArray> {
        let rows = ExampleRows::new(batch)?;
        let cfg = &prepared.config;
        let probes: Vec<(u128, bool, Option<Vec<u32>>)> = (0..rows.len())
            .into_par_iter()
            .map(|row| {
                let text = rows.normalized_text(&cfg.columns, row, &cfg.normalize)?;
                let signature = prepared.hasher.as_ref().and_then(|h| h.signature(&text));
                Ok((key_hash(&text), text.is_empty(), signature))
            })
            .collect::<Result<_>>()?;
        let mut hash = FixedSizeBinaryBuilder::with_capacity(probes.len(), 16);
        let mut empty = BooleanBuilder::with_capacity(probes.len());
        let mut signature = ListBuilder::new(UInt32Builder::new());
        for (h, e, s) in probes {
            hash.append_value(h.to_le_bytes())?;
            empty.append_value(e);
            match s {
                Some(s) => {
                    signature.values().append_slice(&s);
                    signature.append(true);
                }
                None => signature.append(false),
            }
        }
        let fields = Self::output_fields();
        struct_of(vec![
            (fields[0].clone(), Arc::new(hash.finish()) as ArrayRef),
            (fields[1].clone(), Arc::new(empty.finish())),
            (fields[2].clone(), Arc::new(signature.finish())),
        ])
    }
}
