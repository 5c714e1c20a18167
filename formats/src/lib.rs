//! Readers of medtune's raw input formats, and the text normalisation the stages share.
//!
//! Everything here turns bytes into plain Rust values ([`record::Example`] or a
//! [`record::Reject`] naming the line and the reason); the ingest stage turns those into Arrow.
//! The crate has no Arrow, DataFusion or candle in its build, so the parsers compile, test and
//! fuzz (`fuzz/`) on their own.
//!
//! - [`framing`]: a JSON array or a JSON-lines stream, split into records in constant memory;
//! - [`json_records`]: the prompt/completion (ChemProt), alpaca and BIO JSON records;
//! - [`conll`]: CoNLL TSV sentences;
//! - [`bio`]: BIO tag checks shared by the BIO readers;
//! - [`normalize`] and [`text`]: normalisation, key hashes and short text helpers;
//! - [`checks`]: the parsers' invariants on arbitrary bytes, run by the fuzz targets and the
//!   property tests.

#![warn(missing_docs)]

pub mod bio;
pub mod checks;
pub mod conll;
pub mod framing;
pub mod json_records;
pub mod normalize;
pub mod record;
pub mod text;
