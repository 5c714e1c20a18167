//! A minimal PNG writer for an 8-bit RGB buffer (one IHDR, one zlib IDAT, IEND).
//!
//! Written here because the `png` crate (what plotters' own encoder uses) turns on extra
//! `miniz_oxide` features, which rebuilds parquet, DataFusion and Polars (~25 min on 2 cores);
//! this uses the `miniz_oxide` and `crc32fast` the build already has, with their features as
//! they are.

use std::io::Write;
use std::path::Path;

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// The PNG encoding of `rgb` (width × height × 3 bytes, rows top to bottom).
pub fn encode_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let stride = width as usize * 3;
    assert_eq!(rgb.len(), stride * height as usize, "buffer size");
    // Every scanline starts with its filter type (0: none).
    let mut raw = Vec::with_capacity((stride + 1) * height as usize);
    for row in rgb.chunks(stride) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    // 8 bits per sample, colour type 2 (RGB), deflate, no filter method, no interlace.
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &header);
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes `rgb` as a PNG file at `path`.
pub fn write_rgb(path: &Path, width: u32, height: u32, rgb: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&encode_rgb(width, height, rgb))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_pixel_image_has_valid_chunks() {
        let png = encode_rgb(2, 1, &[255, 0, 0, 0, 0, 255]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        // IHDR's CRC, computed over "IHDR" + its 13 bytes.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&png[12..29]);
        assert_eq!(&png[29..33], &crc.finalize().to_be_bytes());
        let inflated =
            miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..png.len() - 16]).unwrap();
        assert_eq!(inflated, vec![0, 255, 0, 0, 0, 0, 255]);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
