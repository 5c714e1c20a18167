//! Stable-toolchain property run of the fuzz targets' checks (`medtune_formats::checks`): seeds
//! cut from the real files in ../shared/data and hand-made edge cases, mutated by a seeded
//! generator (byte flips, truncations, inserted separators, quotes, BOMs, splices), a few
//! thousand cases per parser. The same checks run unbounded under `cargo fuzz` (fuzz/).
//! Inputs the fuzzer found are kept in tests/regressions/ and replayed here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use medtune_formats::checks;

/// Cases per parser (seeds included).
const CASES: usize = 10_000;

/// SplitMix64: a tiny deterministic generator, so a failing case reproduces from its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

fn read(path: &str) -> String {
    let path = data_dir().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Cuts `text` to at most `n` bytes on a character boundary.
fn cut(text: &str, n: usize) -> &str {
    let mut end = text.len().min(n);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// JSON seeds: ChemProt lines and ChatDoctor elements (shortened), as lines and as arrays.
fn json_seeds() -> Vec<Vec<u8>> {
    let chemprot = read("chemprot/both_rel_instruct_raw.jsonl");
    let rows: Vec<String> = chemprot
        .lines()
        .step_by(300)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            format!(
                "{{\"prompt\": {}, \"completion\": {}}}",
                json_string(cut(v["prompt"].as_str().unwrap(), 500)),
                json_string(cut(v["completion"].as_str().unwrap(), 120))
            )
        })
        .collect();
    let chatdoctor = read("chatdoctor/chatdoctor5k.json");
    let all: Vec<serde_json::Value> = serde_json::from_str(&chatdoctor).unwrap();
    let elements: Vec<String> = all
        .iter()
        .step_by(600)
        .map(|v| {
            format!(
                "{{\n  \"instruction\": {},\n  \"input\": {},\n  \"output\": {}\n}}",
                json_string(cut(v["instruction"].as_str().unwrap(), 100)),
                json_string(cut(v["input"].as_str().unwrap(), 200)),
                json_string(cut(v["output"].as_str().unwrap(), 200))
            )
        })
        .collect();
    let conll = read("bc5cdr/train.tsv");
    let bio: Vec<String> = conll
        .split("\n\n")
        .step_by(400)
        .take(8)
        .map(|s| {
            let pairs: Vec<(&str, &str)> = s
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .take(10)
                .collect();
            let words: Vec<String> = pairs.iter().map(|p| json_string(p.0)).collect();
            let tags: Vec<String> = pairs.iter().map(|p| json_string(p.1)).collect();
            format!(
                "{{\"id\": 3, \"words\": [{}], \"tags\": [{}]}}",
                words.join(", "),
                tags.join(", ")
            )
        })
        .collect();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for record in rows.iter().chain(&elements).chain(&bio) {
        seeds.push(record.clone().into_bytes());
    }
    seeds.push(rows[..3].join("\n").into_bytes());
    seeds.push(format!("{}\r\n\r\n{}\r\n", rows[3], rows[4]).into_bytes());
    seeds.push(format!("[\n{}\n]\n", elements[..3].join(",\n")).into_bytes());
    seeds.push(format!("[{}]", elements[3..].join(",")).into_bytes());
    let minified: Vec<String> = elements
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e)
                .unwrap()
                .to_string()
        })
        .collect();
    seeds.push(format!("[{}]", minified.join(",")).into_bytes());
    seeds.push(bio.join("\n").into_bytes());
    for edge in [
        "",
        " \n\t\r\n",
        "[ ]",
        "[]",
        r#"[{"a":[1,{"b":"]"}]},{"c":"\"x,"}]"#,
        r#"[{"a":1},]"#,
        r#"[{"a":1},,{"b":2}]"#,
        "[{\"a\":1},\n{\"a\":",
        "[{\"a\":1}]\n{\"b\":2}",
        "\u{feff}[{\"a\":1}]",
        "\u{feff}{\"a\":1}\n{\"b\":2}",
        r#"[1, "x", null, true, -2.5e3]"#,
        "1\n\"x\"\n\nnull\n",
        r#"["\u005d\\", "\"]"]"#,
        r#"{"prompt": "x", "completion": null}"#,
        r#"{"prompt": "Instruction.\n\nBody", "completion": "x"}"#,
        r#"{"prompt": "a", "prompt": "b", "completion": "c"}"#,
        r#"{"prompt": "\u00e9\n\n", "completion": "\ud83d\ude00"}"#,
        r#"{"instruction": "Q", "input": null, "output": "A"}"#,
        r#"{"words": ["a", "b"], "tags": ["O", "I-Disease"]}"#,
        r#"{"tokens": ["a"], "ner_tags": ["B-Gene"]}"#,
        r#"{"labels": [{"word": "", "entity": "O"}]}"#,
        r#"{"prompt": "p", "completion": "c", "n": 1e400}"#,
        r#"{"words": ["a", "b"], "tags": ["B-Chemical", "I-Disease"]}"#,
    ] {
        seeds.push(edge.as_bytes().to_vec());
    }
    seeds.push(format!("[{{\"k\":\"{}\"}}         ,{{}}]", "y".repeat(54)).into_bytes());
    seeds.push(format!("{{\"a\":\"{}\"}}\r\n", "z".repeat(56)).into_bytes());
    seeds.push(format!("{}{}", "[".repeat(40), "]".repeat(40)).into_bytes());
    seeds
}

/// CoNLL seeds: BC5CDR sentences alone and in runs, and edge cases.
fn conll_seeds() -> Vec<Vec<u8>> {
    let text = read("bc5cdr/devel.tsv");
    let sentences: Vec<&str> = text
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .collect();
    let mut seeds: Vec<Vec<u8>> = sentences
        .iter()
        .step_by(150)
        .map(|s| format!("{s}\n").into_bytes())
        .collect();
    seeds.push(format!("{}\n\n", sentences[5..8].join("\n\n")).into_bytes());
    seeds.push(format!("-DOCSTART-\tO\n\n{}\n", sentences[9..11].join("\n\n")).into_bytes());
    seeds.push(
        sentences[12..14]
            .join("\r\n\r\n")
            .replace('\n', "\r\n")
            .into_bytes(),
    );
    for edge in [
        "",
        "\n \t\n\r\n",
        "a\tO\nno tab\nc\tO\n",
        "a\tNN\tO\n",
        "a\tB-Chemical\r\nb\tI-Chemical\r\n\r\n",
        "a\tO\nb\tI-Disease\n",
        "\u{feff}a\tO\n",
        "\u{feff}-DOCSTART-\tO\n\na\tO\n",
        "\u{feff}\na\tO\n",
        "a\tO\n-DOCSTART-\tO\nb\tO\n",
        "w0\tO\nw1\tO\nw2\tO\nw3\tO\nw4\tO\nw5\tO\n",
        "\tO\na\t \n",
        "a\tO\n\x0c\nb\tO",
        "a\tB-Gene\n",
        "a\tO\nb\tI-Chemical\nc\tI-Chemical\n",
        " a \t B-Disease \n",
    ] {
        seeds.push(edge.as_bytes().to_vec());
    }
    seeds.push(b"a\xff\tO\n".to_vec());
    seeds
}

/// Pieces the mutator inserts: separators, quotes, brackets, escapes, BOMs, line ends.
const PIECES: &[&[u8]] = &[
    b",",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"\\",
    b":",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"\xEF\xBB\xBF",
    b"\n\n",
    b"-DOCSTART-\tO\n",
    b"\tO",
    b"\tB-Chemical",
    b"\tI-Disease",
    b"null",
    b",]",
    b"\\u",
    b"\\n",
    b"\xFF",
    b"\xC3",
    b"\r",
    b"\x0C",
    b"1e400",
    b"\"prompt\":",
    b"\"completion\":\"x\"",
];

fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.truncate(at),
            2 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 => {
                let other = rng.pick(seeds);
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let piece = rng.pick(PIECES);
                data.splice(at..at, piece.iter().copied());
            }
        }
    }
    data
}

/// Runs `check` on every seed and on mutants up to `CASES` inputs; on a panic, prints the case
/// and its input so it can become a regression file.
fn run(name: &str, check: fn(&[u8]), seeds: &[Vec<u8>], rng_seed: u64) {
    let started = Instant::now();
    let mut rng = Rng(rng_seed);
    for case in 0..CASES {
        let data = if case < seeds.len() {
            seeds[case].clone()
        } else {
            let seed = rng.pick(seeds).clone();
            mutate(&mut rng, &seed, seeds)
        };
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!(
                "{name}: case {case} failed on input {:?}",
                String::from_utf8_lossy(&data)
            );
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("{name}: {CASES} cases in {:?}", started.elapsed());
}

#[test]
fn json_framing_properties() {
    run("json_framing", checks::json_framing, &json_seeds(), 1);
}

#[test]
fn json_records_properties() {
    run("json_records", checks::json_records, &json_seeds(), 2);
}

#[test]
fn conll_properties() {
    run("conll", checks::conll, &conll_seeds(), 3);
}

/// Every file in tests/regressions/ is an input the fuzzer once failed on; the target is the
/// first part of its name (`<target>-<what>`).
#[test]
fn fuzz_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let check: fn(&[u8]) = match name.split('-').next().unwrap() {
            "json_framing" => checks::json_framing,
            "json_records" => checks::json_records,
            "conll" => checks::conll,
            other => panic!("{name}: unknown target `{other}`"),
        };
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("regression {name} fails again");
            std::panic::resume_unwind(panic);
        }
    }
}
